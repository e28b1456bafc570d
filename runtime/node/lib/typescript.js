'use strict';
// TypeScript cells: transpiled by the real compiler (transpileModule: no type check, so a
// type error is not fatal, as `ts-node --transpile-only`), then run like JavaScript. The
// source map turns positions in the emitted code back into the cell's.

const path = require('path');
const { SourceMap } = require('module');

const MODULES = process.env.PYXIS_NODE_MODULES || path.join(__dirname, '..', 'node_modules');

let ts = null;

/** The compiler, loaded at the first TypeScript cell (it is big: ~0.2 s). */
function compiler() {
  if (ts === null) {
    ts = require(path.join(MODULES, 'typescript'));
  }
  return ts;
}

function options(t) {
  return {
    target: t.ScriptTarget.ES2022,
    module: t.ModuleKind.ESNext,
    sourceMap: true,
    inlineSources: false,
    removeComments: false,
    esModuleInterop: true,
    experimentalDecorators: true,
    // Keep every import not marked `type`: what a cell imports may be used by later
    // cells only, where the compiler cannot see it used.
    verbatimModuleSyntax: true,
    jsx: t.JsxEmit.React,
  };
}

class TranspileError extends SyntaxError {
  constructor(message, line, column) {
    super(message);
    this.name = 'SyntaxError';
    this.line = line;
    this.column = column;
  }
}

/**
 * `{ code, map }`: the JavaScript of a cell and its source map (a `module.SourceMap`).
 * Syntax errors (the diagnostics transpileModule reports) throw a TranspileError.
 */
function transpile(source, fileName) {
  const t = compiler();
  const result = t.transpileModule(source, {
    compilerOptions: options(t),
    fileName: `${fileName}.ts`,
    reportDiagnostics: true,
  });
  const errors = (result.diagnostics || []).filter((d) => d.category === t.DiagnosticCategory.Error);
  if (errors.length) {
    const d = errors[0];
    const text = t.flattenDiagnosticMessageText(d.messageText, '\n');
    let line = 0;
    let column = 0;
    if (d.file && typeof d.start === 'number') {
      ({ line, character: column } = d.file.getLineAndCharacterOfPosition(d.start));
    }
    throw new TranspileError(`${text} (${line + 1}:${column + 1})`, line + 1, column + 1);
  }
  // The emitted text ends with a sourceMappingURL comment; the map itself is given.
  const code = result.outputText.replace(/\n\/\/# sourceMappingURL=.*\s*$/, '\n');
  const map = result.sourceMapText ? new SourceMap(JSON.parse(result.sourceMapText)) : null;
  return { code, map };
}

/** The cell's (1-based) line and column of a position in the emitted code, or null. */
function original(map, line, column) {
  if (!map) return null;
  const entry = map.findEntry(line - 1, column - 1);
  if (!entry || typeof entry.originalLine !== 'number') return null;
  return { line: entry.originalLine + 1, column: entry.originalColumn + 1 };
}

module.exports = { transpile, original, compiler, TranspileError };
