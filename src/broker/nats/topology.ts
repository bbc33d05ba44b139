/**
 * The JetStream objects Mailroom uses, described as plain data and declared idempotently. With the
 * default names:
 *
 *   publish(priority) ─► messages.email.high │ messages.email │ messages.email.low
 *                          stream `messages`: work-queue retention, file storage, dedupe window
 *                          durable pull consumers, one per subject (exact filter):
 *                          email-processor-high │ email-processor │ email-processor-low
 *                                 │ deadLetter(), undecodable, delivery limit (Mailroom publishes)
 *                                 ▼
 *                          messages.email.failed ─► stream `messages_failed`: limits retention, file
 *
 * Declaring creates what is missing and changes only what is safe to change in place: it adds a
 * missing subject, and sets the dedupe window, AckWait, MaxDeliver and MaxAckPending to Mailroom's
 * values. What cannot change without changing behaviour (retention, storage, ack policy, deliver
 * policy, filter subject, a push consumer under our name) stops start-up with a message that names
 * the object, the setting, what it is and what Mailroom needs.
 */
import {
  AckPolicy,
  type ConsumerConfig,
  DeliverPolicy,
  DiscardPolicy,
  JetStreamApiCodes,
  JetStreamApiError,
  type JetStreamManager,
  ReplayPolicy,
  RetentionPolicy,
  StorageType,
  type StreamConfig,
} from '@nats-io/jetstream';
import { nanos } from '@nats-io/transport-node';
import { PRIORITY_BY_RANK, type Priority } from '../../domain/email.js';

export interface NatsTopologyOptions {
  /** The work stream. */
  readonly stream: string;
  /** The normal-priority subject; `.high` and `.low` are appended for the others. */
  readonly subject: string;
  /** The normal-priority durable consumer; `-high` and `-low` are appended for the others. */
  readonly consumer: string;
  readonly deadLetterSubject: string;
  readonly deadLetterStream: string;
  readonly ackWaitMs: number;
  readonly duplicateWindowMs: number;
  readonly maxAckPending: number;
  /** Replicas of a stream Mailroom creates (a JetStream cluster); never changed afterwards. */
  readonly replicas: number;
}

export interface NatsTopology {
  readonly stream: string;
  readonly subjects: Readonly<Record<Priority, string>>;
  readonly consumers: Readonly<Record<Priority, string>>;
  readonly deadLetterStream: string;
  readonly deadLetterSubject: string;
  readonly streamConfig: DesiredStream;
  readonly deadLetterStreamConfig: DesiredStream;
  readonly consumerConfigs: Readonly<Record<Priority, DesiredConsumer>>;
}

export type DesiredStream = Partial<StreamConfig> &
  Pick<StreamConfig, 'name' | 'subjects' | 'retention' | 'storage' | 'duplicate_window'>;

export type DesiredConsumer = Partial<ConsumerConfig> &
  Required<
    Pick<
      ConsumerConfig,
      | 'durable_name'
      | 'ack_policy'
      | 'deliver_policy'
      | 'ack_wait'
      | 'max_deliver'
      | 'filter_subject'
      | 'max_ack_pending'
    >
  >;

/** Stream and consumer names: what the nats CLI and server accept, minus nothing. */
const NAME = /^[^.*>/\\\s]{1,255}$/;
/** A literal subject: dot-separated tokens, no wildcards, no whitespace. */
const SUBJECT = /^[^.*>\s]+(\.[^.*>\s]+)*$/;

/** Names every object, checks the names, and builds the configurations Mailroom declares. */
export function describeTopology(options: NatsTopologyOptions): NatsTopology {
  const { stream, subject, consumer, deadLetterSubject, deadLetterStream } = options;
  for (const [what, name] of [
    ['stream', stream],
    ['dead-letter stream', deadLetterStream],
    ['consumer', consumer],
  ] as const) {
    if (!NAME.test(name)) {
      throw new RangeError(
        `nats: the ${what} name ${JSON.stringify(name)} is not valid: 1 to 255 characters without whitespace, ".", "*", ">", "/" or "\\"`,
      );
    }
  }
  for (const [what, name] of [
    ['subject', subject],
    ['dead-letter subject', deadLetterSubject],
  ] as const) {
    if (!SUBJECT.test(name)) {
      throw new RangeError(
        `nats: the ${what} ${JSON.stringify(name)} is not a literal subject: dot-separated tokens without whitespace or wildcards`,
      );
    }
  }
  const subjects = { high: `${subject}.high`, normal: subject, low: `${subject}.low` } as const;
  if (Object.values(subjects).includes(deadLetterSubject)) {
    throw new RangeError(`nats: the dead-letter subject ${deadLetterSubject} is also a work subject`);
  }
  if (stream === deadLetterStream) {
    throw new RangeError(`nats: the dead-letter stream must not be the work stream (${stream})`);
  }
  for (const [name, value] of [
    ['ackWaitMs', options.ackWaitMs],
    ['duplicateWindowMs', options.duplicateWindowMs],
    ['maxAckPending', options.maxAckPending],
    ['replicas', options.replicas],
  ] as const) {
    if (!Number.isInteger(value) || value < 1) {
      throw new RangeError(`nats: ${name} must be a positive integer, got ${value}`);
    }
  }
  const consumers = {
    high: `${consumer}-high`,
    normal: consumer,
    low: `${consumer}-low`,
  } as const;
  const duplicateWindow = nanos(options.duplicateWindowMs);
  const consumerConfig = (priority: Priority): DesiredConsumer => ({
    durable_name: consumers[priority],
    description: `Mailroom workers: ${priority}-priority emails`,
    ack_policy: AckPolicy.Explicit,
    deliver_policy: DeliverPolicy.All,
    replay_policy: ReplayPolicy.Instant,
    ack_wait: nanos(options.ackWaitMs),
    // Unlimited on purpose: a message that reaches JetStream's MaxDeliver stays in a work-queue
    // stream, never delivered again, and nobody is told but an advisory. Mailroom counts deliveries
    // itself and dead-letters the message instead (nats-consumer.ts).
    max_deliver: -1,
    filter_subject: subjects[priority],
    max_ack_pending: options.maxAckPending,
  });
  return {
    stream,
    subjects,
    consumers,
    deadLetterStream,
    deadLetterSubject,
    streamConfig: {
      name: stream,
      description: 'Mailroom: email jobs waiting for a worker',
      subjects: PRIORITY_BY_RANK.map((priority) => subjects[priority]),
      retention: RetentionPolicy.Workqueue,
      storage: StorageType.File,
      discard: DiscardPolicy.Old,
      duplicate_window: duplicateWindow,
      num_replicas: options.replicas,
    },
    deadLetterStreamConfig: {
      name: deadLetterStream,
      description: 'Mailroom: messages given up, with the reason in Mailroom-Reason and Mailroom-Error',
      subjects: [deadLetterSubject],
      retention: RetentionPolicy.Limits,
      storage: StorageType.File,
      discard: DiscardPolicy.Old,
      duplicate_window: duplicateWindow,
      num_replicas: options.replicas,
    },
    consumerConfigs: {
      high: consumerConfig('high'),
      normal: consumerConfig('normal'),
      low: consumerConfig('low'),
    },
  };
}

/** What declaring must do to an existing object: nothing, an update, or refuse. */
export interface Plan<T> {
  /** Settings that differ and cannot change in place: each names the object and the setting. */
  readonly conflicts: readonly string[];
  /** The fields to set, when something differs that is safe to change. */
  readonly update?: Partial<T>;
  /** What the update changes, for the log. */
  readonly changes: readonly string[];
}

/**
 * Compares an existing stream with the desired one. `strict` (the work stream): retention and
 * storage must match. Subjects are only ever added (another subject an operator gave the stream
 * stays); the dedupe window is set. Other settings (limits, replicas, ...) are the operator's.
 */
export function planStream(
  existing: StreamConfig,
  desired: DesiredStream,
  strict: boolean,
): Plan<StreamConfig> {
  const conflicts: string[] = [];
  const changes: string[] = [];
  const update: Partial<StreamConfig> = {};
  const where = `stream ${desired.name}`;
  if (strict) {
    for (const key of ['retention', 'storage'] as const) {
      if (existing[key] !== desired[key]) {
        conflicts.push(
          `${where}: ${key} is ${existing[key]}, Mailroom needs ${desired[key]} (it cannot change in place: delete the stream, or name another one)`,
        );
      }
    }
  }
  const missing = desired.subjects.filter((subject) => !(existing.subjects ?? []).includes(subject));
  if (missing.length > 0) {
    update.subjects = [...(existing.subjects ?? []), ...missing];
    changes.push(`${where}: subjects + ${missing.join(', ')}`);
  }
  if (existing.duplicate_window !== desired.duplicate_window) {
    update.duplicate_window = desired.duplicate_window;
    changes.push(
      `${where}: duplicate_window ${existing.duplicate_window / 1e9} s → ${desired.duplicate_window / 1e9} s`,
    );
  }
  return changes.length > 0 ? { conflicts, update, changes } : { conflicts, changes };
}

/** Settings of a consumer that change how it delivers: they must match. */
const FIXED_CONSUMER_SETTINGS = ['ack_policy', 'deliver_policy', 'filter_subject'] as const;
/** Settings safe to update in place (JetStream allows it; verified on 2.9.10). */
const UPDATABLE_CONSUMER_SETTINGS = ['ack_wait', 'max_deliver', 'max_ack_pending', 'description'] as const;

export function planConsumer(
  stream: string,
  existing: ConsumerConfig,
  desired: DesiredConsumer,
): Plan<ConsumerConfig> {
  const conflicts: string[] = [];
  const changes: string[] = [];
  const update: Partial<ConsumerConfig> = {};
  const where = `consumer ${desired.durable_name} on stream ${stream}`;
  if (existing.deliver_subject) {
    conflicts.push(
      `${where}: is a push consumer (deliver_subject ${existing.deliver_subject}); Mailroom needs a pull consumer (delete it, or name another one)`,
    );
  }
  for (const key of FIXED_CONSUMER_SETTINGS) {
    if ((existing[key] ?? '') !== (desired[key] ?? '')) {
      conflicts.push(
        `${where}: ${key} is ${JSON.stringify(existing[key] ?? '')}, Mailroom needs ${JSON.stringify(desired[key])} (delete the consumer, or name another one)`,
      );
    }
  }
  for (const key of UPDATABLE_CONSUMER_SETTINGS) {
    if (desired[key] !== undefined && existing[key] !== desired[key]) {
      (update as Record<string, unknown>)[key] = desired[key];
      changes.push(`${where}: ${key} ${String(existing[key])} → ${String(desired[key])}`);
    }
  }
  return changes.length > 0 ? { conflicts, update, changes } : { conflicts, changes };
}

/** Raised when an existing object differs from what Mailroom needs in a way it will not change. */
export class TopologyConflictError extends Error {
  readonly code = 'NATS_TOPOLOGY_CONFLICT';
  constructor(readonly conflicts: readonly string[]) {
    super(`nats: ${conflicts.join('; ')}`);
    this.name = 'TopologyConflictError';
  }
}

/**
 * Declares both streams and the three consumers: creates what is missing, updates what is safe,
 * throws `TopologyConflictError` for the rest. Safe to repeat and to run from several processes at
 * once. Returns what it created or changed, for the log.
 */
export async function declareTopology(jsm: JetStreamManager, topology: NatsTopology): Promise<string[]> {
  const done: string[] = [];
  // The dead-letter stream first: once work can arrive, a dead letter must have somewhere to go.
  done.push(...(await ensureStream(jsm, topology.deadLetterStreamConfig, false)));
  done.push(...(await ensureStream(jsm, topology.streamConfig, true)));
  for (const priority of PRIORITY_BY_RANK) {
    done.push(...(await ensureConsumer(jsm, topology.stream, topology.consumerConfigs[priority])));
  }
  return done;
}

async function ensureStream(
  jsm: JetStreamManager,
  desired: DesiredStream,
  strict: boolean,
): Promise<string[]> {
  let existing: StreamConfig;
  try {
    existing = (await jsm.streams.info(desired.name)).config;
  } catch (error) {
    if (!isApiError(error, JetStreamApiCodes.StreamNotFound)) throw error;
    try {
      await jsm.streams.add(desired);
      return [`stream ${desired.name} created`];
    } catch (addError) {
      // Another process created it meanwhile (with other settings than ours, or it would have succeeded).
      if (!isApiError(addError, STREAM_NAME_IN_USE)) throw addError;
      existing = (await jsm.streams.info(desired.name)).config;
    }
  }
  const plan = planStream(existing, desired, strict);
  if (plan.conflicts.length > 0) throw new TopologyConflictError(plan.conflicts);
  if (plan.update) await jsm.streams.update(desired.name, plan.update);
  return [...plan.changes];
}

async function ensureConsumer(
  jsm: JetStreamManager,
  stream: string,
  desired: DesiredConsumer,
): Promise<string[]> {
  let existing: ConsumerConfig;
  try {
    existing = (await jsm.consumers.info(stream, desired.durable_name)).config;
  } catch (error) {
    if (!isApiError(error, JetStreamApiCodes.ConsumerNotFound)) throw error;
    // Adding an identical consumer is a no-op, so two processes racing here both succeed.
    await jsm.consumers.add(stream, desired);
    return [`consumer ${desired.durable_name} on stream ${stream} created`];
  }
  const plan = planConsumer(stream, existing, desired);
  if (plan.conflicts.length > 0) throw new TopologyConflictError(plan.conflicts);
  if (plan.update) await jsm.consumers.update(stream, desired.durable_name, plan.update);
  return [...plan.changes];
}

/** "stream name already in use with a different configuration". */
const STREAM_NAME_IN_USE = 10058;

function isApiError(error: unknown, code: number): boolean {
  return error instanceof JetStreamApiError && error.code === code;
}
