'use strict';
// Lint of the kernel and its tests (eslint's flat config). The tools are not part of the
// runtime: scripts/test installs runtime/node/dev/ into <runtime>/devtools-node and runs
//   NODE_PATH=<runtime>/devtools-node/node_modules eslint -c runtime/node/eslint.config.js runtime/node

const js = require('@eslint/js');
const globals = require('globals');

module.exports = [
  { ignores: ['node_modules/**', 'dev/**'] },
  js.configs.recommended,
  {
    files: ['**/*.js'],
    languageOptions: {
      ecmaVersion: 2023,
      sourceType: 'commonjs',
      globals: { ...globals.node },
    },
    linterOptions: { reportUnusedDisableDirectives: 'off' },
    rules: {
      'no-unused-vars': ['error', { argsIgnorePattern: '^_', caughtErrors: 'none' }],
      'no-var': 'error',
      'prefer-const': 'error',
      eqeqeq: ['error', 'smart'],
      'no-constant-condition': ['error', { checkLoops: false }],
      strict: ['error', 'global'],
    },
  },
];
