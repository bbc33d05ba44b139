import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { parseDomainRates, parseRate } from './parse-rates.js';

const RULE = 'the rate must look like 20/s, 600/m or 3600/h';

describe('parseRate', () => {
  test('per second, minute and hour, in tokens per second', () => {
    assert.equal(parseRate('20/s'), 20);
    assert.equal(parseRate('600/m'), 10);
    assert.equal(parseRate('600/min'), 10);
    assert.equal(parseRate('3600/h'), 1);
    assert.equal(parseRate('100/m'), 100 / 60);
    assert.equal(parseRate(' 2.5 / S '), 2.5);
  });

  test('refuses what is not a positive rate, quoting the text and naming the variable', () => {
    for (const text of ['', '20', '/s', '20/d', '20/sec/s', 'fast', '1e3/s', '20 s'])
      assert.throws(() => parseRate(text), { message: `${JSON.stringify(text)}: ${RULE}` }, text);
    for (const text of ['0/s', '-1/s', '0.0/h'])
      assert.throws(() => parseRate(text), {
        message: `${JSON.stringify(text)}: the rate must be greater than 0`,
      });
    assert.throws(() => parseRate('9/d', 'MAILROOM_TRANSPORT_RATE'), {
      message: `MAILROOM_TRANSPORT_RATE: "9/d": ${RULE}`,
    });
  });
});

describe('parseDomainRates', () => {
  test('domains lower-cased, whitespace tolerated, * as the fallback', () => {
    const rates = parseDomainRates(' Gmail.com = 20/s , yahoo.com=600/m,*=100/s ');
    assert.deepEqual(
      rates.byDomain,
      new Map([
        ['gmail.com', 20],
        ['yahoo.com', 10],
      ]),
    );
    assert.equal(rates.fallback, 100);
  });

  test('no fallback unless * is given; blank text means no rates at all', () => {
    const rates = parseDomainRates('gmail.com=20/s');
    assert.equal(rates.fallback, undefined);
    assert.equal('fallback' in rates, false);
    assert.deepEqual(parseDomainRates(''), { byDomain: new Map() });
    assert.deepEqual(parseDomainRates('   '), { byDomain: new Map() });
    assert.deepEqual(parseDomainRates('*=1/h'), { byDomain: new Map(), fallback: 1 / 3600 });
  });

  test('each ugly input is refused with a message that names the entry and the rule', () => {
    const cases: [string, string][] = [
      ['gmail.com=fast', `"gmail.com=fast": ${RULE}`],
      ['gmail.com=20/s,,yahoo.com=10/s', 'entry 2: the entry is empty (a comma too many?)'],
      ['gmail.com=20/s,', 'entry 2: the entry is empty (a comma too many?)'],
      ['=20/s', '"=20/s": the domain is missing before ='],
      ['gmail.com', '"gmail.com": an entry must look like gmail.com=20/s, or *=100/s for every other domain'],
      ['gmail.com=0/s', '"gmail.com=0/s": the rate must be greater than 0'],
      ['gmail.com=-1/s', '"gmail.com=-1/s": the rate must be greater than 0'],
      ['gmail.com=20/d', `"gmail.com=20/d": ${RULE}`],
      ['gmail.com=', `"gmail.com=": ${RULE}`],
      ['gmail.com=20/s,GMAIL.com=10/s', '"GMAIL.com=10/s": gmail.com is given twice'],
      ['*=1/s,yahoo.com=2/s,*=3/s', '"*=3/s": * (every other domain) is given twice'],
      ['*.gmail.com=20/s', '"*.gmail.com=20/s": the domain must be a host name like gmail.com, or *'],
      ['gmail..com=20/s', '"gmail..com=20/s": the domain must be a host name like gmail.com, or *'],
      ['user@gmail.com=20/s', '"user@gmail.com=20/s": the domain must be a host name like gmail.com, or *'],
      ['a=b=20/s', `"a=b=20/s": ${RULE}`],
    ];
    for (const [text, message] of cases)
      assert.throws(() => parseDomainRates(text), { message: `MAILROOM_DOMAIN_RATES: ${message}` }, text);
  });
});
