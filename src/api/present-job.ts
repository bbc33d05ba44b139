import type { Job, JobEvent, Mailbox } from '../domain/email.js';

const iso = (epochMs: number) => new Date(epochMs).toISOString();

function mailboxText(mailbox: Mailbox): string {
  return mailbox.name ? `${JSON.stringify(mailbox.name)} <${mailbox.address}>` : mailbox.address;
}

/** A job as the v1 API shows it; `events` only when the history was loaded. */
export function presentJob(job: Job, events?: readonly JobEvent[]) {
  const { content } = job;
  return {
    id: job.id,
    status: job.status,
    priority: job.priority,
    attempts: job.attempts,
    from: mailboxText(content.from),
    to: content.to.map(mailboxText),
    cc: content.cc.map(mailboxText),
    bcc: content.bcc.map(mailboxText),
    subject: content.subject,
    tags: job.tags,
    metadata: job.metadata,
    message_id: job.messageId,
    created_at: iso(job.createdAt),
    updated_at: iso(job.updatedAt),
    send_at: job.sendAt === undefined ? null : iso(job.sendAt),
    last_error: job.lastError ?? null,
    dead_letter_reason: job.deadLetterReason ?? null,
    dead_lettered_at: job.deadLetteredAt === undefined ? null : iso(job.deadLetteredAt),
    ...(events && { events: events.map(presentEvent) }),
  };
}

export function presentEvent(event: JobEvent) {
  return { type: event.type, at: iso(event.at), attempt: event.attempt, detail: event.detail };
}
