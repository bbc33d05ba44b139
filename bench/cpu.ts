/**
 * Where the CPU goes during a step, from /proc: each of the benchmark's own processes by pid, the
 * servers the scaled-out shape talks to (its own PostgreSQL backends by pid; the rest of PostgreSQL
 * and RabbitMQ's Erlang VM by process name, machine-wide, so other users of those servers count
 * there too), and the whole machine. Also each group's write system calls (/proc/<pid>/io syscw,
 * sockets and files alike): on loopback every socket write also pays for the receiver's TCP work,
 * and writes per email show the round trips. CPU time from /proc is what the processes used, unlike a profile's samples,
 * which on a saturated machine also count the time a thread waited to be scheduled again.
 * Linux only; elsewhere every figure reads NaN.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { cpus } from 'node:os';

/** USER_HZ: the unit of utime and stime in /proc/<pid>/stat. 100 on every mainstream Linux. */
const TICKS_PER_SEC = 100;

export interface CpuGroup {
  /** A trailing `*` marks a machine-wide group that may include other users' processes. */
  readonly name: string;
  /** The processes by pid… */
  readonly pids?: readonly number[];
  /** …found when sampling… */
  readonly findPids?: () => Promise<readonly number[]>;
  /** …or every process whose command name (/proc/<pid>/comm) is one of these. */
  readonly commands?: readonly string[];
}

interface ProcessSample {
  /** utime + stime, in ticks. */
  readonly ticks: number;
  /** Write system calls so far; NaN when /proc/<pid>/io cannot be read. */
  readonly writes: number;
}

export interface CpuSample {
  readonly at: number;
  /** Per group: a sample per pid. */
  readonly groups: Map<string, Map<number, ProcessSample>>;
  /** Busy and total ticks of the whole machine (all cores). */
  readonly machine: { busy: number; total: number };
}

/** utime + stime of a process in ticks; undefined when it is gone. */
function processTicks(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name is in parentheses and may hold spaces: count fields after the last ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return Number(fields[11]) + Number(fields[12]);
  } catch {
    return undefined;
  }
}

function processWrites(pid: number): number {
  try {
    const match = /^syscw:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/io`, 'utf8'));
    return match ? Number(match[1]) : Number.NaN;
  } catch {
    return Number.NaN;
  }
}

function pidsByCommand(commands: readonly string[]): number[] {
  const pids: number[] = [];
  let entries: string[];
  try {
    entries = readdirSync('/proc');
  } catch {
    return pids;
  }
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (commands.includes(readFileSync(`/proc/${entry}/comm`, 'utf8').trim())) pids.push(Number(entry));
    } catch {}
  }
  return pids;
}

function machineTicks(): { busy: number; total: number } {
  try {
    const line = readFileSync('/proc/stat', 'utf8').split('\n')[0]!;
    const values = line.trim().split(/\s+/).slice(1).map(Number);
    const total = values.reduce((a, b) => a + b, 0);
    // idle and iowait
    return { busy: total - values[3]! - (values[4] ?? 0), total };
  } catch {
    return { busy: Number.NaN, total: Number.NaN };
  }
}

/** A pid counts in the first group that names it, so a catch-all group after specific ones gets the rest. */
export async function sampleCpu(groups: readonly CpuGroup[]): Promise<CpuSample> {
  const found = await Promise.all(groups.map((group) => group.findPids?.().catch(() => []) ?? []));
  const seen = new Set<number>();
  const sampled = new Map<string, Map<number, ProcessSample>>();
  groups.forEach((group, i) => {
    const processes = new Map<number, ProcessSample>();
    const pids = [
      ...(group.pids ?? []),
      ...found[i]!,
      ...(group.commands ? pidsByCommand(group.commands) : []),
    ];
    for (const pid of pids) {
      if (seen.has(pid)) continue;
      seen.add(pid);
      const ticks = processTicks(pid);
      if (ticks !== undefined) processes.set(pid, { ticks, writes: processWrites(pid) });
    }
    sampled.set(group.name, processes);
  });
  return { at: performance.now(), groups: sampled, machine: machineTicks() };
}

export interface CpuUsage {
  readonly seconds: number;
  /** Cores used on average between the samples, per group. */
  readonly cores: Record<string, number>;
  /** Write system calls between the samples, per group. */
  readonly writes: Record<string, number>;
  /** Cores busy on the whole machine, and how many it has. */
  readonly machineBusy: number;
  readonly machineCores: number;
}

export function cpuBetween(start: CpuSample, end: CpuSample): CpuUsage {
  const seconds = (end.at - start.at) / 1000;
  const cores: Record<string, number> = {};
  const writes: Record<string, number> = {};
  for (const [name, after] of end.groups) {
    const before = start.groups.get(name) ?? new Map<number, ProcessSample>();
    let ticks = 0;
    let written = 0;
    // A process that started between the samples counts from zero; one that ended is lost.
    for (const [pid, value] of after) {
      ticks += value.ticks - (before.get(pid)?.ticks ?? 0);
      written += value.writes - (before.get(pid)?.writes ?? 0);
    }
    cores[name] = ticks / TICKS_PER_SEC / seconds;
    writes[name] = written;
  }
  const machineCores = cpus().length;
  const totalTicks = end.machine.total - start.machine.total;
  return {
    seconds,
    cores,
    writes,
    machineBusy:
      totalTicks > 0 ? ((end.machine.busy - start.machine.busy) / totalTicks) * machineCores : Number.NaN,
    machineCores,
  };
}

/**
 * `cpu (cores, and ms and write syscalls per email): api 0.34 (0.68, 6.1), …; all listed 1.9 cores,
 * 3.8 ms per email (at most 520/s on 2 cores); machine busy 1.98 of 2`, per email against `emails`
 * handled in the window.
 */
export function formatCpu(usage: CpuUsage, emails: number): string {
  const msPerEmail = (cores: number) => (cores * usage.seconds * 1000) / emails;
  const groups = Object.entries(usage.cores)
    .map(([name, cores]) => {
      const writes = usage.writes[name]! / emails;
      return `${name} ${cores.toFixed(2)} (${msPerEmail(cores).toFixed(2)}, ${Number.isNaN(writes) ? '?' : writes.toFixed(1)})`;
    })
    .join(', ');
  const allCores = Object.values(usage.cores).reduce((a, b) => a + b, 0);
  const allMs = msPerEmail(allCores);
  return (
    `cpu (cores, and ms and write syscalls per email): ${groups}\n` +
    `    all listed ${allCores.toFixed(2)} cores, ${allMs.toFixed(2)} ms per email (at most ${((usage.machineCores * 1000) / allMs).toFixed(0)}/s on ${usage.machineCores} cores at this cost); ` +
    `machine busy ${usage.machineBusy.toFixed(2)} of ${usage.machineCores}`
  );
}
