'use strict';
// The REPL rewrite of a cell: what makes top-level declarations persist between cells
// and top-level `await` work, with line numbers that still point into the cell.
//
// A cell runs as a classic script in the kernel's global scope (vm.Script, so SIGINT
// can break it). Two cases, as Node's own REPL (lib/internal/repl/await.js) splits them:
//
// - No top-level `await` (nor a static `import`): the cell stays a script. `let` and
//   `const` become `var` and a class declaration `var C = class C {…}`, so each name is a
//   property of the global object: the next cell sees it and may declare it again (a
//   re-run cell would otherwise fail with "Identifier has already been declared").
// - Otherwise the body goes into `(async () => { … })()`. Every top-level name is hoisted
//   as a `var` in a first line of its own (the script is compiled with lineOffset -1, so
//   the cell's first line is still line 1), declarations become assignments
//   (`const {a} = o` → `void ({a} = o)`), functions are copied to the global object at
//   the start of the body, static imports become `await import()`, and the last
//   expression statement becomes the function's return value.
//
// Only small ranges of the source are replaced or inserted, never whole statements
// (except imports, padded with their newlines), so a stack frame's line is the cell's.

const path = require('path');

const MODULES = process.env.PYXIS_NODE_MODULES || path.join(__dirname, '..', 'node_modules');
// The parser is loaded at the first cell that needs it, and this file too: kernel.js runs
// a cell without the words of its NEEDS_REWRITE (the constructs changed here) as it is (a
// kernel that starts for `1 + 1` does not pay ~20 ms for acorn, nor ~1 ms for this file).
let acorn = null;
let walk = null;
function parser() {
  if (acorn === null) {
    acorn = require(path.join(MODULES, 'acorn'));
    walk = require(path.join(MODULES, 'acorn-walk'));
  }
  return acorn;
}

const PARSE_OPTIONS = {
  ecmaVersion: 'latest',
  sourceType: 'script',
  allowAwaitOutsideFunction: true,
  allowImportExportEverywhere: true,
  allowHashBang: true,
  allowReserved: true,
};

/** Parses a cell; throws acorn's SyntaxError (with `pos` and `loc`). */
function parse(code) {
  return parser().parse(code, { ...PARSE_OPTIONS, locations: true });
}

/** Names bound by a declaration pattern (`a`, `{b, c: [d]}`, `...e`). */
function patternNames(node, out) {
  if (!node) return out;
  switch (node.type) {
    case 'Identifier':
      out.push(node.name);
      break;
    case 'ObjectPattern':
      for (const prop of node.properties) patternNames(prop.type === 'RestElement' ? prop.argument : prop.value, out);
      break;
    case 'ArrayPattern':
      for (const el of node.elements) patternNames(el, out);
      break;
    case 'RestElement':
      patternNames(node.argument, out);
      break;
    case 'AssignmentPattern':
      patternNames(node.left, out);
      break;
    default:
      break;
  }
  return out;
}

/** Whether the statement uses `await` (or `for await`) outside any nested function. */
function usesAwait(statement) {
  let found = false;
  const skip = () => {};
  walk.recursive(statement, null, {
    AwaitExpression() {
      found = true;
    },
    ForOfStatement(node, st, c) {
      if (node.await) found = true;
      c(node.left, st);
      c(node.right, st);
      c(node.body, st);
    },
    Function: skip,
    FunctionDeclaration: skip,
    FunctionExpression: skip,
    ArrowFunctionExpression: skip,
    // Class bodies hold only methods (functions) and field initializers, where `await`
    // cannot refer to the cell.
    ClassBody: skip,
  });
  return found;
}

/** Dynamic `import(…)` anywhere in the cell: the kernel resolves it. */
function dynamicImports(ast) {
  const out = [];
  walk.full(ast, (node) => {
    if (node.type === 'ImportExpression') out.push(node);
  });
  return out;
}

function importCode(node, code) {
  const source = code.slice(node.source.start, node.source.end);
  const parts = ['__pyxis.t = await __pyxis.import(' + source + ')'];
  const names = [];
  for (const spec of node.specifiers) {
    const local = spec.local.name;
    names.push(local);
    if (spec.type === 'ImportDefaultSpecifier') parts.push(`${local} = __pyxis.t.default`);
    else if (spec.type === 'ImportNamespaceSpecifier') parts.push(`${local} = __pyxis.t`);
    else {
      const imported = spec.imported.type === 'Literal' ? JSON.stringify(spec.imported.value) : JSON.stringify(spec.imported.name);
      parts.push(`${local} = __pyxis.t[${imported}]`);
    }
  }
  const lines = (code.slice(node.start, node.end).match(/\n/g) || []).length;
  return { text: `void (${parts.join(', ')});` + '\n'.repeat(lines), names };
}

/**
 * The script text of a cell, and how to run it:
 * `{ code, lineOffset, async, hasResult }`. With `async`, the script's value is the
 * promise of the cell (whose value is the last expression's); otherwise it is the
 * script's completion value, meaningful when `hasResult`.
 */
function rewrite(source) {
  const ast = parse(source);
  const body = ast.body;
  const edits = [];
  // `order` places edits at one position: what closes the statement before (0), then
  // the `return (` of the last one (1), then what opens a statement (2).
  const insert = (pos, text, order = 2) => edits.push({ start: pos, end: pos, text, order });
  const replace = (start, end, text) => edits.push({ start, end, text, order: 2 });
  for (const node of dynamicImports(ast)) replace(node.start, node.start + 'import'.length, '__pyxis.import');

  const isAsync = body.some((st) => st.type === 'ImportDeclaration' || usesAwait(st));
  let last = null;
  for (let i = body.length - 1; i >= 0 && !last; i -= 1) if (body[i].type !== 'EmptyStatement') last = body[i];
  const hasResult = Boolean(last && last.type === 'ExpressionStatement');
  const hoisted = [];
  const functions = [];

  for (let st of body) {
    if (st.type === 'ExportNamedDeclaration' || st.type === 'ExportDefaultDeclaration') {
      // A cell is not a module: `export` is dropped and what it declares stays.
      if (st.declaration) {
        replace(st.start, st.declaration.start, st.type === 'ExportDefaultDeclaration' && st.declaration.type.endsWith('Expression') ? 'void ' : '');
        st = st.declaration;
      } else {
        replace(st.start, st.end, '');
        continue;
      }
    } else if (st.type === 'ExportAllDeclaration') {
      replace(st.start, st.end, '');
      continue;
    }
    if (st.type === 'VariableDeclaration') {
      const kindEnd = st.declarations[0].start;
      if (!isAsync) {
        if (st.kind !== 'var') replace(st.start, st.start + st.kind.length, 'var');
        if (st.kind !== 'var') {
          for (const d of st.declarations) if (!d.init) insert(d.id.end, ' = undefined');
        }
        continue;
      }
      for (const d of st.declarations) {
        patternNames(d.id, hoisted);
        if (!d.init && st.kind !== 'var') insert(d.id.end, ' = undefined');
      }
      replace(st.start, kindEnd, 'void (');
      insert(st.declarations[st.declarations.length - 1].end, ')', 0);
    } else if (st.type === 'ClassDeclaration' && st.id) {
      const name = st.id.name;
      if (isAsync) {
        hoisted.push(name);
        insert(st.start, `${name} = `);
      } else {
        insert(st.start, `var ${name} = `);
      }
      insert(st.end, ';', 0);
    } else if (st.type === 'FunctionDeclaration' && st.id) {
      if (isAsync) {
        hoisted.push(st.id.name);
        functions.push(st.id.name);
      }
    } else if (st.type === 'ImportDeclaration') {
      const { text, names } = importCode(st, source);
      hoisted.push(...names);
      replace(st.start, st.end, text);
    }
  }

  let returnOpen = '';
  if (isAsync && hasResult) {
    // `return (` goes right after the statement before (or at the end of the first line
    // of the wrapper), not before the expression: its columns stay the cell's.
    const i = body.indexOf(last);
    if (i > 0) insert(body[i - 1].end, '; return (', 1);
    else returnOpen = ' return (';
    insert(last.expression.end, ')', 0);
  }

  // Apply the edits from the end; at one position, the last in the text first.
  edits.sort((a, b) => b.start - a.start || b.order - a.order);
  let out = source;
  for (const e of edits) out = out.slice(0, e.start) + e.text + out.slice(e.end);

  if (!isAsync) return { code: out, lineOffset: 0, async: false, hasResult };
  const names = [...new Set(hoisted)];
  const decl = names.length ? `var ${names.join(', ')}; ` : '';
  const globals = functions.map((n) => `globalThis[${JSON.stringify(n)}] = ${n};`).join(' ');
  // `source` may end inside a line comment: the closing goes on a line of its own.
  return {
    code: `${decl}(async () => { ${globals}${returnOpen}\n${out}\n})()`,
    lineOffset: -1,
    async: true,
    hasResult,
  };
}

/** complete / incomplete / invalid, as Jupyter's is_complete_request asks. */
function completeness(code) {
  try {
    parser().parse(code, PARSE_OPTIONS);
    return 'complete';
  } catch (err) {
    if (typeof err.pos === 'number' && err.pos >= code.trimEnd().length) return 'incomplete';
    return 'invalid';
  }
}

module.exports = { rewrite, parse, completeness, patternNames };
