'use strict';
// Length-prefixed JSON frames, as crates/protocol and the Python driver speak them:
// a 4-byte big-endian length, then one UTF-8 JSON object.

const MAX_FRAME = 64 * 1024 * 1024;
const HEADER = 4;
// JSON.stringify writes a lone surrogate as an escape ("\udc00"), which serde_json
// rejects; such text (possible in user strings) is re-encoded with '?' in its place.
const LONE_SURROGATE = /\\u[dD][89abcdefABCDEF][0-9a-fA-F]{2}/;

class FrameError extends Error {}

function wellFormed(_key, value) {
  if (typeof value !== 'string') return value;
  if (typeof value.toWellFormed === 'function') return value.toWellFormed().replace(/\uFFFD/g, '?');
  return value.replace(/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g, '?');
}

/** The JSON text of a message, always valid UTF-8. */
function toJson(msg) {
  const text = JSON.stringify(msg);
  return LONE_SURROGATE.test(text) ? JSON.stringify(msg, wellFormed) : text;
}

/** One frame: header and body. */
function encode(msg) {
  const text = toJson(msg);
  const len = Buffer.byteLength(text, 'utf8');
  const frame = Buffer.allocUnsafe(HEADER + len);
  frame.writeUInt32BE(len, 0);
  frame.write(text, HEADER, 'utf8');
  return frame;
}

/** Accumulates received bytes and yields the complete messages in them. */
class FrameBuffer {
  constructor(maxFrame = MAX_FRAME) {
    this.chunks = [];
    this.size = 0;
    this.max = maxFrame;
  }

  feed(chunk) {
    this.chunks.push(chunk);
    this.size += chunk.length;
  }

  pending() {
    return this.size;
  }

  /** The next message, or null when more bytes are needed. Throws FrameError. */
  next() {
    if (this.size < HEADER) return null;
    if (this.chunks.length > 1) this.chunks = [Buffer.concat(this.chunks, this.size)];
    const buf = this.chunks[0];
    const len = buf.readUInt32BE(0);
    if (len > this.max) throw new FrameError(`frame of ${len} bytes exceeds the ${this.max} byte limit`);
    if (this.size < HEADER + len) return null;
    const body = buf.toString('utf8', HEADER, HEADER + len);
    const rest = buf.subarray(HEADER + len);
    this.chunks = rest.length ? [rest] : [];
    this.size = rest.length;
    let msg;
    try {
      msg = JSON.parse(body);
    } catch (err) {
      throw new FrameError(`invalid JSON frame: ${err.message}`);
    }
    if (msg === null || typeof msg !== 'object' || Array.isArray(msg)) {
      throw new FrameError('frame is not a JSON object');
    }
    return msg;
  }
}

module.exports = { encode, toJson, FrameBuffer, FrameError, MAX_FRAME, HEADER };
