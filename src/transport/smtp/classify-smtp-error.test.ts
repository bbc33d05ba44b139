import assert from 'node:assert/strict';
import { test } from 'node:test';
import { classifySmtpError } from './classify-smtp-error.js';

test('4xx replies are transient, 5xx permanent', () => {
  assert.equal(classifySmtpError({ responseCode: 451, response: '451 4.3.0 try later' }).kind, 'transient');
  assert.equal(classifySmtpError({ responseCode: 421, response: '421 busy' }).kind, 'transient');
  assert.equal(
    classifySmtpError({ responseCode: 550, response: '550 5.1.1 no such user' }).kind,
    'permanent',
  );
  assert.equal(classifySmtpError({ responseCode: 554, response: '554 rejected' }).kind, 'permanent');
});

test('failures without a reply are transient and keep nodemailer’s code in the message', () => {
  for (const code of ['ECONNECTION', 'ETIMEDOUT', 'ESOCKET']) {
    const result = classifySmtpError({ code, message: 'Connection closed' });
    assert.equal(result.kind, 'transient');
    assert.match(result.message, new RegExp(code));
  }
});

test('an envelope with no usable recipient is permanent; an unknown error is transient', () => {
  assert.equal(classifySmtpError({ code: 'EENVELOPE', message: 'No recipients defined' }).kind, 'permanent');
  assert.equal(classifySmtpError({ message: 'something odd' }).kind, 'transient');
});

test('the reply code and text are kept for the job history', () => {
  const result = classifySmtpError({
    responseCode: 452,
    response: '452 4.2.2 mailbox full',
    code: 'EENVELOPE',
    command: 'RCPT TO',
  });
  assert.deepEqual(result, {
    kind: 'transient',
    code: 'SMTP_TRANSIENT',
    message: '452 4.2.2 mailbox full',
    responseCode: 452,
    throttle: 'recipients',
  });
});

test('"try later" replies are throttling: at RCPT TO or DATA for the recipients, before for the transport', () => {
  const throttleOf = (responseCode: number, command?: string) =>
    (classifySmtpError({ responseCode, response: `${responseCode} later`, command }) as { throttle?: string })
      .throttle;
  for (const code of [421, 450, 451, 452]) {
    assert.equal(throttleOf(code, 'RCPT TO'), 'recipients', `${code} at RCPT TO`);
    assert.equal(throttleOf(code, 'DATA'), 'recipients', `${code} at DATA`);
    assert.equal(throttleOf(code, 'CONN'), 'transport', `${code} at the greeting`);
    assert.equal(throttleOf(code, 'MAIL FROM'), 'transport', `${code} at MAIL FROM`);
  }
  // Other 4xx replies and failures without a reply are not throttling: the breaker counts them.
  assert.equal(throttleOf(454, 'RCPT TO'), undefined);
  assert.equal(throttleOf(471, 'DATA'), undefined);
  assert.equal(
    (classifySmtpError({ code: 'ECONNECTION', message: 'refused' }) as { throttle?: string }).throttle,
    undefined,
  );
});
