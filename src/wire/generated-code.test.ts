import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, join, relative } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('../..', import.meta.url));
const bin = join(root, 'node_modules', '.bin');
const GENERATED = join('src', 'wire', 'gen');

/** Runs the pinned buf with the pinned protoc-gen-es on PATH, as `npm run` does. */
function buf(args: string[]) {
  return spawnSync(join(bin, 'buf'), args, {
    cwd: root,
    env: { ...process.env, PATH: `${bin}${delimiter}${process.env['PATH'] ?? ''}` },
    encoding: 'utf8',
  });
}

function filesUnder(dir: string): Map<string, string> {
  const files = new Map<string, string>();
  for (const entry of readdirSync(dir, { recursive: true, withFileTypes: true })) {
    if (!entry.isFile()) continue;
    const path = join(entry.parentPath, entry.name);
    files.set(relative(dir, path), readFileSync(path, 'utf8'));
  }
  return files;
}

test(`${GENERATED} is what buf generates from proto/ (if not: npm run proto, and commit)`, () => {
  const out = mkdtempSync(join(tmpdir(), 'mailroom-proto-'));
  try {
    const result = buf(['generate', '--output', out]);
    assert.equal(result.status, 0, `buf generate failed:\n${result.stderr}`);
    const fresh = filesUnder(join(out, GENERATED));
    const committed = filesUnder(join(root, GENERATED));
    assert.deepEqual(
      [...committed.keys()].sort(),
      [...fresh.keys()].sort(),
      `the files in ${GENERATED} differ from what proto/ generates: run npm run proto and commit`,
    );
    for (const [name, text] of fresh) {
      assert.ok(committed.get(name) === text, `${GENERATED}/${name} is stale: run npm run proto and commit`);
    }
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});

test('proto/ passes buf lint', () => {
  const result = buf(['lint']);
  assert.equal(result.status, 0, `buf lint:\n${result.stdout}${result.stderr}`);
});
