import MailComposer from 'nodemailer/lib/mail-composer/index.js';
import type { Address } from 'nodemailer/lib/mailer/index.js';
import type { Job, Mailbox } from '../domain/email.js';
import type { OutgoingMessage } from '../transport/transport.js';

/**
 * Builds a job's MIME message once per attempt; transports send the bytes as they are (`raw`), so no
 * transport builds it again. The Message-ID comes from the job, so a retry carries the same one.
 */
export async function buildMessage(job: Job): Promise<OutgoingMessage> {
  const { content } = job;
  const composer = new MailComposer({
    from: toAddress(content.from),
    to: content.to.map(toAddress),
    cc: content.cc.map(toAddress),
    // Bcc recipients go in the envelope only; MailComposer leaves the header out.
    bcc: content.bcc.map(toAddress),
    replyTo: content.replyTo.map(toAddress),
    subject: content.subject,
    text: content.text,
    html: content.html,
    headers: { ...content.headers },
    messageId: job.messageId,
    date: new Date(job.createdAt),
    // Never let message content point the composer at a file or URL to read.
    disableFileAccess: true,
    disableUrlAccess: true,
  });
  const raw = await composer.compile().build();
  const recipients = [...content.to, ...content.cc, ...content.bcc].map((mailbox) => mailbox.address);
  return {
    jobId: job.id,
    messageId: job.messageId,
    envelope: { from: content.from.address, to: [...new Set(recipients)] },
    raw,
  };
}

function toAddress(mailbox: Mailbox): Address | string {
  return mailbox.name ? { name: mailbox.name, address: mailbox.address } : mailbox.address;
}
