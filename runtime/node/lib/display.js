'use strict';
// `display(obj)` and its helpers: MIME bundles from values, as Jupyter front ends show them.

const util = require('util');

const INSPECT_OPTIONS = {
  depth: 4,
  maxArrayLength: 100,
  maxStringLength: 10000,
  breakLength: 100,
  colors: false,
};

const IMAGE_MAGIC = [
  ['image/png', [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]],
  ['image/jpeg', [0xff, 0xd8, 0xff]],
  ['image/gif', [0x47, 0x49, 0x46, 0x38]],
  ['application/pdf', [0x25, 0x50, 0x44, 0x46, 0x2d]],
];
// MIME types whose values travel as base64 text.
const BINARY_MIME = /^(image\/(png|jpeg|gif|webp)|application\/pdf)$/;

function isBytes(value) {
  return value instanceof Uint8Array || value instanceof ArrayBuffer;
}

function bytesOf(value) {
  return value instanceof ArrayBuffer ? Buffer.from(value) : Buffer.from(value.buffer, value.byteOffset, value.byteLength);
}

/** The MIME type of an image (or PDF) by its first bytes, or null. */
function sniff(buf) {
  for (const [mime, magic] of IMAGE_MAGIC) {
    if (buf.length >= magic.length && magic.every((b, i) => buf[i] === b)) return mime;
  }
  if (buf.length >= 12 && buf.toString('latin1', 0, 4) === 'RIFF' && buf.toString('latin1', 8, 12) === 'WEBP') {
    return 'image/webp';
  }
  return null;
}

function inspect(value) {
  return util.inspect(value, INSPECT_OPTIONS);
}

/** Whether `value` is a plain object whose keys are all MIME types: a bundle as is. */
function isBundle(value) {
  if (value === null || typeof value !== 'object' || Array.isArray(value) || isBytes(value)) return false;
  const proto = Object.getPrototypeOf(value);
  if (proto !== Object.prototype && proto !== null) return false;
  const keys = Object.keys(value);
  return keys.length > 0 && keys.every((k) => /^[\w.+-]+\/[\w.+-]+$/.test(k));
}

/** A JSON-safe bundle (bytes as base64) from a bundle given by the user. */
function normalizeBundle(bundle) {
  const out = {};
  for (const [mime, value] of Object.entries(bundle)) {
    if (isBytes(value)) out[mime] = bytesOf(value).toString('base64');
    else if (typeof value === 'string') out[mime] = BINARY_MIME.test(mime) ? value.replace(/\s+/g, '') : value;
    else if (mime === 'application/json' || mime.endsWith('+json')) out[mime] = value === undefined ? null : value;
    else out[mime] = String(value);
  }
  if (!('text/plain' in out)) out['text/plain'] = `<${Object.keys(out).join(', ')}>`;
  return out;
}

/** The MIME bundle `display(value)` shows. */
function bundleOf(value) {
  if (isBundle(value)) return normalizeBundle(value);
  if (isBytes(value)) {
    const buf = bytesOf(value);
    const mime = sniff(buf);
    if (mime) return { [mime]: buf.toString('base64'), 'text/plain': `<${mime}, ${buf.length} bytes>` };
    return { 'text/plain': inspect(value) };
  }
  if (typeof value === 'string') {
    if (/^\s*(<\?xml[^>]*>\s*)?<svg[\s>]/i.test(value)) return { 'image/svg+xml': value, 'text/plain': '<svg>' };
    return { 'text/plain': value };
  }
  return { 'text/plain': inspect(value) };
}

/** The `display` global of a kernel: `emit(bundle, metadata)` sends one display_data. */
function makeDisplay(emit) {
  const display = (value, metadata) => {
    emit(bundleOf(value), metadata);
  };
  const typed = (mime, transform = (v) => String(v)) => (value, metadata) => {
    emit(normalizeBundle({ [mime]: transform(value) }), metadata);
  };
  display.html = typed('text/html');
  display.svg = typed('image/svg+xml');
  display.markdown = typed('text/markdown');
  display.text = typed('text/plain');
  display.latex = typed('text/latex');
  display.json = (value, metadata) => {
    emit({ 'application/json': JSON.parse(JSON.stringify(value ?? null)), 'text/plain': inspect(value) }, metadata);
  };
  const image = (mime) => (bytes, metadata) => {
    if (!isBytes(bytes)) throw new TypeError(`display.${mime.split('/')[1]}() takes a Buffer or Uint8Array`);
    emit(normalizeBundle({ [mime]: bytes, 'text/plain': `<${mime}, ${bytes.byteLength} bytes>` }), metadata);
  };
  display.png = image('image/png');
  display.jpeg = image('image/jpeg');
  display.gif = image('image/gif');
  display.pdf = image('application/pdf');
  display.mime = (bundle, metadata) => {
    if (bundle === null || typeof bundle !== 'object') throw new TypeError('display.mime() takes an object of MIME type → value');
    emit(normalizeBundle(bundle), metadata);
  };
  return display;
}

module.exports = { makeDisplay, bundleOf, inspect, sniff, INSPECT_OPTIONS };
