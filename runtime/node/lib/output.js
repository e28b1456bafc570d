'use strict';
// A kernel's output: the per-cell buffer and byte cap, coalesced stream text, the sender.
//
// Everything a cell makes the supervisor hold is charged against the cell's cap, as the
// Python driver does (runtime/python/pyxis_runtime/output.py): stream text, each rich
// event's whole frame, and a fixed overhead per event. Nothing bigger than the room left
// is ever encoded, so a cell cannot make the kernel build an unbounded message either.

const { encode } = require('./framing');

const STREAM_FLUSH_BYTES = 64 * 1024;
// Output of a cell that waits (timers, promises) is sent this long after it appeared.
const FLUSH_INTERVAL_MS = 20;
const IDLE_OUTPUT_LIMIT = 1024 * 1024;
// Charged for every event on top of its bytes: what the supervisor spends to hold one.
const EVENT_OVERHEAD = 64;
// Below this much room a rich event is not even computed.
const FULL_ROOM = 512;

function nbytes(text) {
  return Buffer.byteLength(text, 'utf8');
}

/** The longest prefix of `text` of at most `size` UTF-8 bytes. */
function cut(text, size) {
  if (size <= 0) return '';
  if (nbytes(text) <= size) return text;
  // Each UTF-16 unit is at least one byte, so `size` units hold more than `size` bytes.
  const buf = Buffer.from(text.slice(0, size), 'utf8');
  let end = size;
  // Do not split a character: back off to the start of the one that does not fit.
  while (end > 0 && (buf[end] & 0xc0) === 0x80) end -= 1;
  return buf.toString('utf8', 0, end);
}

class Output {
  /** `write(buffer)` sends bytes to the supervisor, in order. */
  constructor(write) {
    this.sink = write;
    this.queue = [];
    this.queued = 0;
    this.cellId = '';
    this.executing = false;
    this.limit = IDLE_OUTPUT_LIMIT;
    this.used = 0;
    this.truncated = false;
    this.pendName = '';
    this.pend = [];
    this.pendLen = 0;
    this.timer = null;
    this.onTimer = () => {
      this.timer = null;
      this.flushStream();
      this.send();
    };
  }

  flushStream() {
    if (this.pend.length) {
      const text = this.pend.length === 1 ? this.pend[0] : this.pend.join('');
      this.enqueue({ type: 'stream', id: this.cellId, name: this.pendName, text });
      this.pend = [];
      this.pendLen = 0;
    }
  }

  enqueue(msg) {
    const frame = encode(msg);
    this.queue.push(frame);
    this.queued += frame.length;
  }

  arm() {
    if (this.timer === null) {
      this.timer = setTimeout(this.onTimer, FLUSH_INTERVAL_MS);
      this.timer.unref();
    }
  }

  disarm() {
    if (this.timer !== null) {
      clearTimeout(this.timer);
      this.timer = null;
    }
  }

  /** Stream text (console.log, process.stdout/stderr). */
  write(name, text) {
    let n = nbytes(text);
    if (!n) return;
    let room = this.limit - this.used;
    if (!this.pend.length || this.pendName !== name) {
      if (room <= EVENT_OVERHEAD) {
        this.truncated = true;
        return;
      }
      this.used += EVENT_OVERHEAD;
      room -= EVENT_OVERHEAD;
    }
    if (n > room) {
      this.truncated = true;
      text = cut(text, room);
      n = nbytes(text);
      if (!text) return;
    }
    this.used += n;
    if (this.pend.length && this.pendName !== name) this.flushStream();
    this.pendName = name;
    this.pend.push(text);
    this.pendLen += n;
    if (this.pendLen < STREAM_FLUSH_BYTES) {
      this.arm();
      return;
    }
    this.flushStream();
    this.send();
  }

  /**
   * Queues a rich event after the pending text; false if the cap dropped it. `size` is a
   * lower bound of its bytes known before encoding: an event that cannot fit is dropped
   * without being encoded. `last`: the cell's reply follows before any timer could fire
   * (its value, its error), so no flush is timed for it (a cell's first timer costs ~1 ms).
   */
  event(msg, size = 0, last = false) {
    if (this.used + size + EVENT_OVERHEAD > this.limit) {
      this.truncated = true;
      return false;
    }
    if (this.cellId && msg.id === undefined) msg.id = this.cellId;
    const frame = encode(msg);
    const cost = frame.length + EVENT_OVERHEAD;
    if (this.used + cost > this.limit) {
      this.truncated = true;
      return false;
    }
    this.used += cost;
    this.flushStream();
    this.queue.push(frame);
    this.queued += frame.length;
    if (this.queued >= STREAM_FLUSH_BYTES) this.send();
    else if (!last) this.arm();
    return true;
  }

  /** A small event past the cap (the name of a cell's error); flags the cell truncated. */
  forceEvent(msg, last = false) {
    this.truncated = true;
    if (this.cellId && msg.id === undefined) msg.id = this.cellId;
    this.flushStream();
    this.enqueue(msg);
    if (!last) this.arm();
  }

  room() {
    return this.limit - this.used;
  }

  /** No room is left for another rich event (the cell is flagged truncated). */
  full() {
    if (this.limit - this.used > FULL_ROOM) return false;
    this.truncated = true;
    return true;
  }

  startCell(cellId, limit) {
    this.cellId = cellId;
    this.limit = limit;
    this.used = this.pendLen + (this.pend.length ? EVENT_OVERHEAD : 0);
    this.truncated = false;
    this.executing = true;
  }

  finishCell(reply) {
    this.executing = false;
    this.flushStream();
    this.enqueue(reply);
    this.limit = IDLE_OUTPUT_LIMIT;
    this.used = 0;
    this.disarm();
    this.send();
  }

  /** Sends a message that is not a cell's output (not charged). */
  reply(msg) {
    this.enqueue(msg);
    this.send();
  }

  send() {
    if (!this.queue.length) return;
    const data = this.queue.length === 1 ? this.queue[0] : Buffer.concat(this.queue, this.queued);
    this.queue = [];
    this.queued = 0;
    this.sink(data);
  }
}

module.exports = { Output, cut, nbytes, EVENT_OVERHEAD, IDLE_OUTPUT_LIMIT, STREAM_FLUSH_BYTES };
