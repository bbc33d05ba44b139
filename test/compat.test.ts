import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, test } from 'node:test';
import type { LightMyRequestResponse } from 'fastify';
import { simpleParser } from 'mailparser';
import { startTestApp, type TestApp } from './support/test-app.js';

/** Shapes of the Distributed Email Sender (shared/reference/distributed-email-sender.md). */
interface Submitted {
  message: string;
  job_id: string;
  status: string;
}

interface HistoryEntry {
  status: string;
  timestamp: string;
  message: string;
}

interface HistoryJob {
  job_id: string;
  to: string;
  subject: string;
  status: string;
  created_at: string;
  updated_at: string;
  retry_count: number;
  history: HistoryEntry[];
}

interface History {
  total: number;
  jobs: HistoryJob[];
}

const JOB_KEYS = ['created_at', 'history', 'job_id', 'retry_count', 'status', 'subject', 'to', 'updated_at'];
const ISO = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;

describe('Distributed Email Sender compatibility', () => {
  let t: TestApp;
  before(async () => {
    t = await startTestApp({ MAILROOM_FROM: 'Sender <sender@compat.test>' });
  });
  after(() => t.stop());
  beforeEach(() => t.sink.setBehaviour('accept'));

  async function submit(body: unknown): Promise<Submitted> {
    const response = await t.request('POST', '/api/emails', body);
    assert.equal(response.statusCode, 202, response.body);
    return response.json() as Submitted;
  }

  async function history(query = ''): Promise<History> {
    const response = await t.request('GET', `/api/jobs/history${query}`);
    assert.equal(response.statusCode, 200, response.body);
    return response.json() as History;
  }

  async function historyOf(jobId: string): Promise<HistoryJob> {
    const job = (await history()).jobs.find((item) => item.job_id === jobId);
    assert.ok(job, `job ${jobId} is in the history`);
    return job;
  }

  async function jobCount(): Promise<number> {
    const response = await t.request('GET', '/v1/emails?limit=100');
    return (response.json() as { data: unknown[] }).data.length;
  }

  async function refused(body: unknown): Promise<LightMyRequestResponse> {
    const before = await jobCount();
    const response = await t.request('POST', '/api/emails', body);
    assert.equal(response.statusCode, 400, response.body);
    assert.equal(await jobCount(), before, 'no job was written');
    return response;
  }

  function details(response: LightMyRequestResponse) {
    const { error } = response.json() as {
      error: { code: string; details: { field: string; rule: string }[] };
    };
    assert.equal(error.code, 'VALIDATION_FAILED');
    return error.details.map(({ field, rule }) => ({ field, rule }));
  }

  test('POST /api/emails answers 202 with exactly the reference shape, and the body arrives as text', async () => {
    const response = await t.request('POST', '/api/emails', {
      to: 'test@example.com',
      subject: 'Test',
      body: 'Hello World',
    });
    assert.equal(response.statusCode, 202, response.body);
    const body = response.json() as Submitted;
    assert.deepEqual(Object.keys(body).sort(), ['job_id', 'message', 'status']);
    assert.equal(body.message, 'Email job submitted successfully');
    assert.equal(body.status, 'queued');
    assert.match(body.job_id, /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);

    const view = await t.waitForStatus(body.job_id, 'sent');
    const received = t.sink.messages().filter((message) => message.messageId === view.message_id);
    assert.equal(received.length, 1);
    assert.deepEqual(received[0]!.envelope.to, ['test@example.com']);
    assert.equal(received[0]!.envelope.from, 'sender@compat.test');
    const parsed = await simpleParser(received[0]!.raw);
    assert.equal(parsed.subject, 'Test');
    assert.equal(parsed.text?.trimEnd(), 'Hello World');
    assert.equal(parsed.html, false, 'a plain body has no html part');
  });

  test('an HTML body is sent as html too, with a text part', async () => {
    const html = '<p>Hello <b>there</b></p>';
    const { job_id } = await submit({ to: 'html@example.com', subject: 'HTML', body: html });
    const view = await t.waitForStatus(job_id, 'sent');
    const raw = t.sink.messages().find((message) => message.messageId === view.message_id)!.raw;
    const parsed = await simpleParser(raw);
    assert.equal(typeof parsed.html, 'string');
    assert.match(parsed.html as string, /<p>Hello <b>there<\/b><\/p>/);
    assert.ok(parsed.text && parsed.text.trim().length > 0, 'a text part as well');
    assert.match(raw.toString(), /multipart\/alternative/i);
  });

  test('an unknown field or a missing body is 400 with details, and no job', async () => {
    assert.deepEqual(
      details(await refused({ to: 'a@example.com', subject: 's', body: 'b', cc: 'c@example.com' })),
      [{ field: 'cc', rule: 'unknown_field' }],
    );
    assert.deepEqual(details(await refused({ to: 'a@example.com', subject: 's' })), [
      { field: 'body', rule: 'required' },
    ]);
    assert.deepEqual(details(await refused({ to: 'a@example.com', subject: 's', body: '' })), [
      { field: 'body', rule: 'body_required' },
    ]);
    // v1 fields are not compatibility fields.
    assert.deepEqual(details(await refused({ to: 'a@example.com', subject: 's', text: 'b' })), [
      { field: 'text', rule: 'unknown_field' },
      { field: 'body', rule: 'required' },
    ]);
    const many = details(await refused({ to: 'not-an-address', body: 5 }));
    for (const expected of [
      { field: 'to', rule: 'email' },
      { field: 'subject', rule: 'required' },
      { field: 'body', rule: 'type' },
    ]) {
      assert.ok(
        many.some((item) => item.field === expected.field && item.rule === expected.rule),
        `${JSON.stringify(expected)} in ${JSON.stringify(many)}`,
      );
    }
    assert.deepEqual(details(await refused('[]')), [{ field: 'body', rule: 'type' }]);
    const malformed = await refused('{"to":');
    assert.equal((malformed.json() as { error: { code: string } }).error.code, 'INVALID_JSON');
  });

  test('GET /api/jobs/history: the reference shape; a delivered job is completed with its history', async () => {
    const { job_id } = await submit({ to: 'history@example.com', subject: 'History', body: 'Hi' });
    await t.waitForStatus(job_id, 'sent');
    const all = await history();
    assert.deepEqual(Object.keys(all).sort(), ['jobs', 'total']);
    assert.equal(all.total, all.jobs.length);
    assert.equal(all.total, await jobCount());
    for (const job of all.jobs) {
      assert.deepEqual(Object.keys(job).sort(), JOB_KEYS);
      for (const entry of job.history)
        assert.deepEqual(Object.keys(entry).sort(), ['message', 'status', 'timestamp']);
    }

    const job = all.jobs.find((item) => item.job_id === job_id)!;
    assert.equal(job.to, 'history@example.com');
    assert.equal(job.subject, 'History');
    assert.equal(job.status, 'completed');
    assert.equal(job.retry_count, 0);
    assert.match(job.created_at, ISO);
    assert.match(job.updated_at, ISO);
    assert.ok(job.updated_at >= job.created_at);
    assert.deepEqual(
      job.history.map((entry) => entry.status),
      ['queued', 'processing', 'completed'],
    );
    assert.equal(job.history[0]!.message, 'Job queued');
    for (const entry of job.history) {
      assert.match(entry.timestamp, ISO);
      assert.equal(typeof entry.message, 'string');
    }
    const times = job.history.map((entry) => entry.timestamp);
    assert.deepEqual(times, [...times].sort());
    assert.equal(job.history[0]!.timestamp, job.created_at);
  });

  test('a job the relay refuses with 5xx shows failed', async () => {
    await t.sink.setBehaviour('permfail');
    const { job_id } = await submit({ to: 'refused@example.com', subject: 'Refused', body: 'No' });
    await t.waitForStatus(job_id, 'failed');
    const job = await historyOf(job_id);
    assert.equal(job.status, 'failed');
    assert.equal(job.retry_count, 0);
    assert.deepEqual(
      job.history.map((entry) => entry.status),
      ['queued', 'processing', 'failed'],
    );
    assert.match(job.history.at(-1)!.message, /550/);
  });

  test('a job deferred once and then sent shows retry_count 1', async () => {
    let failures = 0;
    await t.sink.setBehaviour(() => (failures++ < 1 ? 'tempfail' : 'accept'));
    const { job_id } = await submit({ to: 'retry@example.com', subject: 'Retry', body: 'Again' });
    await t.waitForStatus(job_id, 'sent');
    const job = await historyOf(job_id);
    assert.equal(job.status, 'completed');
    assert.equal(job.retry_count, 1);
    assert.deepEqual(
      job.history.map((entry) => entry.status),
      ['queued', 'processing', 'queued', 'processing', 'completed'],
    );
    assert.match(job.history[2]!.message, /451/);
  });

  test('?limit=1 returns only the newest job; a bad limit is 400', async () => {
    const { job_id } = await submit({ to: 'newest@example.com', subject: 'Newest', body: 'Last' });
    const one = await history('?limit=1');
    assert.equal(one.jobs.length, 1);
    assert.equal(one.jobs[0]!.job_id, job_id);
    assert.ok((await history()).jobs.length > 1);
    for (const query of ['?limit=0', '?limit=abc', '?limit=1001', '?page=2']) {
      const response = await t.request('GET', `/api/jobs/history${query}`);
      assert.equal(response.statusCode, 400, `${query}: ${response.body}`);
      assert.equal((response.json() as { error: { code: string } }).error.code, 'VALIDATION_FAILED');
    }
  });
});
