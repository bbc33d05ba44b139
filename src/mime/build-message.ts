import type { Job } from '../domain/email.js';
import type { OutgoingMessage } from '../transport/transport.js';
import { composeMime } from './compose-mime.js';

/**
 * Builds a job's message once per attempt: the envelope and the MIME bytes. Transports send the bytes
 * as they are (`raw`), so none builds the message again. Bcc recipients are in the envelope only.
 */
export function buildMessage(job: Job): OutgoingMessage {
  const { content } = job;
  const recipients = [...content.to, ...content.cc, ...content.bcc].map((mailbox) => mailbox.address);
  return {
    jobId: job.id,
    messageId: job.messageId,
    envelope: { from: content.from.address, to: [...new Set(recipients)] },
    raw: composeMime(job),
  };
}
