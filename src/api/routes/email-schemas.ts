/** Request bodies for the OpenAPI document; the checks themselves are Mailroom's validators. */
import { Type } from '@sinclair/typebox';
import { PRIORITIES } from '../../domain/email.js';

const AddressList = Type.Union([Type.String(), Type.Array(Type.String(), { maxItems: 50 })]);

const AttachmentBody = Type.Object(
  {
    filename: Type.String({
      minLength: 1,
      maxLength: 255,
      description: 'A file name, not a path: no control characters, / or \\. Non-ASCII is fine.',
    }),
    content: Type.String({
      contentEncoding: 'base64',
      description: 'The file itself, canonical base64 on one line. Never a path or a URL.',
    }),
    content_type: Type.String({ description: 'type/subtype, e.g. application/pdf.' }),
    content_id: Type.Optional(
      Type.String({
        maxLength: 250,
        description: 'Makes it an inline part, for `<img src="cid:…">` in the HTML (multipart/related).',
      }),
    ),
  },
  { additionalProperties: false },
);

/** Documents the body; the checks themselves are validateSendEmail's (one place, every rule named). */
export const SendEmailBody = Type.Object(
  {
    from: Type.Optional(
      Type.String({ description: 'Sender; default MAILROOM_FROM. `a@b.c` or `Name <a@b.c>`.' }),
    ),
    to: AddressList,
    cc: Type.Optional(AddressList),
    bcc: Type.Optional(AddressList),
    reply_to: Type.Optional(AddressList),
    subject: Type.Optional(
      Type.String({ minLength: 1, maxLength: 998, description: 'Required unless `template` is given.' }),
    ),
    text: Type.Optional(Type.String()),
    html: Type.Optional(Type.String()),
    headers: Type.Optional(Type.Record(Type.String(), Type.String())),
    tags: Type.Optional(Type.Array(Type.String(), { maxItems: 20 })),
    metadata: Type.Optional(Type.Record(Type.String(), Type.String())),
    priority: Type.Optional(Type.Union(PRIORITIES.map((p) => Type.Literal(p)))),
    send_at: Type.Optional(Type.String({ format: 'date-time', description: 'ISO 8601 with a time zone.' })),
    template: Type.Optional(
      Type.String({
        description: 'A template code (POST /v1/templates), instead of subject, text and html.',
      }),
    ),
    template_version: Type.Optional(
      Type.Integer({ minimum: 1, description: 'Pins a version of `template`; default the latest.' }),
    ),
    variables: Type.Optional(
      Type.Record(Type.String(), Type.Unknown(), {
        description: 'The template’s variables (JSON); every one it prints outside a block is required.',
      }),
    ),
    attachments: Type.Optional(
      Type.Array(AttachmentBody, {
        maxItems: 20,
        description: 'Decoded sizes count in MAILROOM_MAX_MESSAGE_BYTES with subject, bodies and headers.',
      }),
    ),
  },
  { additionalProperties: false },
);

/** One email of POST /v1/emails/batch: the same as one sent alone, templates included. */
export const BatchEmailBody = SendEmailBody;
