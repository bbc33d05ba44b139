/**
 * Where the CPU goes during a step, from /proc: each of the benchmark's own processes by pid, the
 * servers the scaled-out shape talks to by process name (every PostgreSQL backend, RabbitMQ's
 * Erlang VM: machine-wide, so other users of those servers count too), and the whole machine.
 * Linux only; elsewhere every figure reads NaN.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { cpus } from 'node:os';

/** USER_HZ: the unit of utime and stime in /proc/<pid>/stat. 100 on every mainstream Linux. */
const TICKS_PER_SEC = 100;

export interface CpuGroup {
  readonly name: string;
  /** The processes by pid… */
  readonly pids?: readonly number[];
  /** …or every process whose command name (/proc/<pid>/comm) is one of these. */
  readonly commands?: readonly string[];
}

interface Sample {
  readonly at: number;
  /** Per group: CPU ticks per pid. */
  readonly groups: Map<string, Map<number, number>>;
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

export function sampleCpu(groups: readonly CpuGroup[]): Sample {
  const sampled = new Map<string, Map<number, number>>();
  for (const group of groups) {
    const ticks = new Map<number, number>();
    for (const pid of [...(group.pids ?? []), ...(group.commands ? pidsByCommand(group.commands) : [])]) {
      const value = processTicks(pid);
      if (value !== undefined) ticks.set(pid, value);
    }
    sampled.set(group.name, ticks);
  }
  return { at: performance.now(), groups: sampled, machine: machineTicks() };
}

export interface CpuUsage {
  /** Cores used on average between the samples, per group. */
  readonly cores: Record<string, number>;
  /** Cores busy on the whole machine, and how many it has. */
  readonly machineBusy: number;
  readonly machineCores: number;
}

export function cpuBetween(start: Sample, end: Sample): CpuUsage {
  const seconds = (end.at - start.at) / 1000;
  const cores: Record<string, number> = {};
  for (const [name, after] of end.groups) {
    const before = start.groups.get(name) ?? new Map<number, number>();
    let ticks = 0;
    // A process that started between the samples counts from zero; one that ended is lost.
    for (const [pid, value] of after) ticks += value - (before.get(pid) ?? 0);
    cores[name] = ticks / TICKS_PER_SEC / seconds;
  }
  const machineCores = cpus().length;
  const totalTicks = end.machine.total - start.machine.total;
  return {
    cores,
    machineBusy:
      totalTicks > 0 ? ((end.machine.busy - start.machine.busy) / totalTicks) * machineCores : Number.NaN,
    machineCores,
  };
}

export function formatCpu(usage: CpuUsage): string {
  const groups = Object.entries(usage.cores)
    .map(([name, cores]) => `${name} ${cores.toFixed(2)}`)
    .join(', ');
  return `cpu (cores): ${groups}; machine busy ${usage.machineBusy.toFixed(2)} of ${usage.machineCores}`;
}
