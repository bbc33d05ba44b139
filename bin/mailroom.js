#!/usr/bin/env node
// The published entry: the compiled CLI. `npm install` builds dist/ (the `prepare` script).
import '../dist/cli.js';
