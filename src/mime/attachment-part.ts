import mimeFuncs from 'nodemailer/lib/mime-funcs/index.js';
import type { Attachment } from '../domain/email.js';
import type { Part } from './compose-mime.js';

const BASE64_LINE = 76;
const HEADER_WIDTH = 76;

/**
 * An attachment as a MIME part: base64 as the client sent it, folded into 76-character lines (the API
 * accepts only canonical base64, so nothing is decoded here). The file name goes out twice, as mail
 * clients read either: RFC 2231 `filename*=utf-8''…` in Content-Disposition, and an RFC 2047
 * encoded-word `name="=?UTF-8?B?…?="` in Content-Type for clients that predate RFC 2231.
 */
export function attachmentPart(attachment: Attachment): Part {
  const { filename, contentType, contentId } = attachment;
  const disposition = contentId === undefined ? 'attachment' : 'inline';
  const headers = [
    `Content-Type: ${contentType}; name=${nameParam(filename)}`,
    'Content-Transfer-Encoding: base64',
    `Content-Disposition: ${mimeFuncs.buildHeaderValue({ value: disposition, params: { filename } })}`,
    ...(contentId === undefined ? [] : [`Content-ID: <${contentId}>`]),
  ];
  return {
    headers: headers.map((line) => mimeFuncs.foldLines(line, HEADER_WIDTH)),
    body: lines(attachment.content),
  };
}

function nameParam(filename: string): string {
  if (!mimeFuncs.isPlainText(filename)) return `"${mimeFuncs.encodeWord(filename, 'B', 52)}"`;
  return `"${filename.replace(/["\\]/g, '\\$&')}"`;
}

function lines(base64: string): string {
  const out: string[] = [];
  for (let i = 0; i < base64.length; i += BASE64_LINE) out.push(base64.slice(i, i + BASE64_LINE));
  return out.join('\r\n');
}
