import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { describe, test } from 'node:test';
import { forbiddenAddress, forbiddenHost } from './address-guard.js';
import { postWebhook } from './post-webhook.js';
import { isWebhookSecret, newWebhookSecret, signWebhook } from './sign-webhook.js';

describe('signWebhook', () => {
  test('matches the Standard Webhooks reference vector', () => {
    // From the spec's reference libraries' tests (standard-webhooks, svix).
    const signature = signWebhook(
      'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw',
      'msg_p5jXN8AQM9LWM0D4loKWxJek',
      1614265330,
      '{"test": 2432232314}',
    );
    assert.equal(signature, 'v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=');
  });

  test('new secrets are whsec_ and 32 random bytes; malformed ones are refused', () => {
    const secret = newWebhookSecret();
    assert.ok(isWebhookSecret(secret));
    assert.equal(Buffer.from(secret.slice(6), 'base64').length, 32);
    assert.notEqual(newWebhookSecret(), secret);
    for (const bad of [
      '',
      'whsec_',
      'whsec_c2hvcnQ=',
      `sk_${secret.slice(6)}`,
      `${secret}!`,
      `whsec_${'A'.repeat(120)}`,
    ]) {
      assert.equal(isWebhookSecret(bad), false, bad);
    }
  });
});

describe('address guard', () => {
  test('only public unicast addresses pass', () => {
    for (const address of ['93.184.215.14', '8.8.8.8', '2606:4700:4700::1111', '64:ff9b::93.184.215.14']) {
      assert.equal(forbiddenAddress(address), undefined, address);
    }
    for (const address of [
      '127.0.0.1',
      '::1',
      '10.1.2.3',
      '172.31.255.255',
      '192.168.0.1',
      '169.254.169.254',
      '100.100.100.200',
      '0.0.0.0',
      '::',
      '::ffff:10.0.0.1',
      '::ffff:127.0.0.1',
      // IPv4-compatible and NAT64 forms are judged as the IPv4 address they carry.
      '::10.0.0.1',
      '::127.0.0.1',
      '::169.254.169.254',
      '64:ff9b::10.0.0.1',
      '64:ff9b::a9fe:a9fe',
      'fe80::1',
      'fd00:ec2::254',
      '224.0.0.1',
      '255.255.255.255',
    ]) {
      assert.ok(forbiddenAddress(address), address);
    }
  });

  test('a name is refused when any of its addresses is', async () => {
    const resolveTo = (addresses: string[]) => async () => addresses;
    assert.equal(await forbiddenHost('hooks.example', resolveTo(['93.184.215.14'])), undefined);
    assert.match(
      (await forbiddenHost('rebind.example', resolveTo(['93.184.215.14', '10.0.0.7'])))!,
      /rebind\.example resolves to 10\.0\.0\.7 is a private address/,
    );
    assert.match((await forbiddenHost('[::1]'))!, /loopback/);
    assert.match(
      (await forbiddenHost('nowhere.invalid', async () =>
        Promise.reject(Object.assign(new Error('x'), { code: 'ENOTFOUND' })),
      ))!,
      /does not resolve \(ENOTFOUND\)/,
    );
    const failing = async () => Promise.reject(Object.assign(new Error('x'), { code: 'EAI_AGAIN' }));
    assert.equal(
      await forbiddenHost('flaky.example', failing, 'allow'),
      undefined,
      'start-up lets it through',
    );
    assert.match((await forbiddenHost('[::1]', failing, 'allow'))!, /loopback/, 'an address is still judged');
  });

  test('the check runs again at connect time: a name that resolves to loopback gets no request', async () => {
    let requests = 0;
    const server = createServer((_request, response) => {
      requests++;
      response.end('ok');
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as AddressInfo;
    try {
      const options = { timeoutMs: 2000, allowPrivate: false };
      const byName = await postWebhook(`http://localhost:${port}/hook`, {}, '{}', options);
      assert.match(byName.error!, /webhook target refused: localhost resolves to .* loopback address/);
      assert.equal(byName.statusCode, undefined);
      const byAddress = await postWebhook(`http://127.0.0.1:${port}/hook`, {}, '{}', options);
      assert.match(byAddress.error!, /webhook target refused: 127\.0\.0\.1 is a loopback address/);
      assert.equal(requests, 0);
      // The same request with MAILROOM_WEBHOOKS_ALLOW_PRIVATE gets through: the refusals were the guard's.
      const allowed = await postWebhook(`http://localhost:${port}/hook`, {}, '{}', {
        ...options,
        allowPrivate: true,
      });
      assert.equal(allowed.statusCode, 200);
      assert.equal(requests, 1);
    } finally {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });

  test('redirects are not followed, timeouts and refusals are results', async () => {
    const server = createServer((request, response) => {
      if (request.url === '/redirect') response.writeHead(307, { location: 'http://10.0.0.1/' }).end();
      // /slow never answers
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as AddressInfo;
    try {
      const options = { timeoutMs: 300, allowPrivate: true };
      const redirected = await postWebhook(`http://127.0.0.1:${port}/redirect`, {}, '{}', options);
      assert.equal(redirected.statusCode, 307);
      assert.match(redirected.error!, /^HTTP 307/);
      const slow = await postWebhook(`http://127.0.0.1:${port}/slow`, {}, '{}', options);
      assert.equal(slow.error, 'no answer within 300 ms');
    } finally {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
    const refused = await postWebhook(`http://127.0.0.1:${port}/gone`, {}, '{}', {
      timeoutMs: 1000,
      allowPrivate: true,
    });
    assert.match(refused.error!, /ECONNREFUSED/);
  });
});
