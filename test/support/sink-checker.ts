/**
 * The checker of the fault tests: what reached the SMTP sink, counted by Message-ID, against the
 * emails that had to be delivered and the documented duplicate window
 * (docs/failure-modes.md#the-duplicate-window). The property every fault test asserts: nothing
 * lost, nothing unknown, and no email sent twice unless it was in the window (and then twice at
 * most).
 */
import assert from 'node:assert/strict';
import type { SmtpSink } from './smtp-sink.js';

export interface SinkReport {
  /** Message-IDs that had to arrive. */
  readonly expected: number;
  /** Messages the sink accepted, copies included. */
  readonly received: number;
  /** Expected and never accepted by the sink: lost. */
  readonly missing: readonly string[];
  /** Accepted by the sink and not expected (nor tolerated). */
  readonly unexpected: readonly string[];
  /** Accepted more than once. */
  readonly duplicates: readonly string[];
  /** Duplicates that were not in the window: the property is broken. */
  readonly outsideWindow: readonly string[];
  /** Accepted three times or more: more than one crash window cannot explain one job. */
  readonly moreThanTwice: readonly string[];
}

export interface CheckOptions {
  /** Message-IDs that may arrive twice: the jobs in the duplicate window. */
  readonly window?: ReadonlySet<string>;
  /** Message-IDs that may arrive though they are not expected (e.g. committed, but the 202 was lost). */
  readonly tolerated?: ReadonlySet<string>;
}

export function checkSink(
  sink: SmtpSink,
  expected: Iterable<string>,
  options: CheckOptions = {},
): SinkReport {
  const want = new Set(expected);
  const window = options.window ?? new Set<string>();
  const tolerated = options.tolerated ?? new Set<string>();
  const counts = sink.countByMessageId();
  const duplicates = [...counts].filter(([, n]) => n > 1).map(([id]) => id);
  return {
    expected: want.size,
    received: sink.messages().length,
    missing: [...want].filter((id) => !counts.has(id)),
    unexpected: [...counts.keys()].filter((id) => !want.has(id) && !tolerated.has(id)),
    duplicates,
    outsideWindow: duplicates.filter((id) => !window.has(id)),
    moreThanTwice: duplicates.filter((id) => counts.get(id)! > 2),
  };
}

/** One line for t.diagnostic. */
export function summarize(report: SinkReport): string {
  return (
    `expected ${report.expected}, sink received ${report.received}: ${report.missing.length} lost, ` +
    `${report.unexpected.length} unexpected, ${report.duplicates.length} duplicated ` +
    `(${report.outsideWindow.length} outside the window)`
  );
}

/** Fails unless nothing was lost or unknown and every duplicate is inside the window, sent twice at most. */
export function assertDeliveredOnce(report: SinkReport, context = ''): void {
  const why = (what: string) => `${what}${context ? ` (${context})` : ''}: ${summarize(report)}`;
  assert.deepEqual(report.missing, [], why('lost: accepted emails the relay never got'));
  assert.deepEqual(report.unexpected, [], why('the relay got emails nobody accepted'));
  assert.deepEqual(report.outsideWindow, [], why('sent twice outside the duplicate window'));
  assert.deepEqual(report.moreThanTwice, [], why('sent more than twice'));
}
