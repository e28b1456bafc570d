// The v1 API as the page uses it. Every call carries the token from the
// browser's storage as an Authorization header; the token never goes into a
// URL. Errors come back as ApiError with the server's envelope code.

import { createParser, type EventSourceMessage } from "eventsource-parser";

const TOKEN_KEY = "pyxis.token";

export function getToken(): string {
  return localStorage.getItem(TOKEN_KEY) ?? "";
}

export function setToken(token: string): void {
  if (token) localStorage.setItem(TOKEN_KEY, token);
  else localStorage.removeItem(TOKEN_KEY);
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

/** Called on every 401, so the page can ask for the token again. */
let onUnauthorized: (err: ApiError) => void = () => {};
export function setUnauthorizedHandler(f: (err: ApiError) => void): void {
  onUnauthorized = f;
}

function headers(extra: Record<string, string> = {}): Headers {
  const h = new Headers(extra);
  const token = getToken();
  if (token) h.set("Authorization", `Bearer ${token}`);
  return h;
}

async function failure(res: Response): Promise<ApiError> {
  let code = `http_${res.status}`;
  let message = res.statusText || `HTTP ${res.status}`;
  try {
    const body = await res.json();
    if (body?.error?.message) {
      code = String(body.error.code ?? code);
      message = String(body.error.message);
    }
  } catch {
    // not the JSON envelope: keep the status line
  }
  const err = new ApiError(res.status, code, message);
  if (res.status === 401) onUnauthorized(err);
  return err;
}

async function call(method: string, path: string, init: RequestInit = {}): Promise<Response> {
  let res: Response;
  try {
    res = await fetch(path, {
      ...init,
      method,
      headers: headers((init.headers as Record<string, string>) ?? {}),
      cache: "no-store",
    });
  } catch (e) {
    throw new ApiError(0, "network", `cannot reach the server (${(e as Error).message})`);
  }
  if (!res.ok) throw await failure(res);
  return res;
}

async function json<T>(method: string, path: string, body?: unknown): Promise<T> {
  const init: RequestInit = {};
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers = { "Content-Type": "application/json" };
  }
  const res = await call(method, path, init);
  if (res.status === 204) return undefined as T;
  return (await res.json()) as T;
}

export interface Limits {
  memory_bytes: number;
  pids: number;
  cpus: number;
  disk_bytes: number;
  timeout_s: number;
}

export interface Usage {
  memory_bytes: number;
  memory_peak_bytes: number;
  pids: number;
  cpu_usec: number;
  disk_bytes: number;
}

export interface Session {
  id: string;
  language: string;
  state: string;
  created_at: string;
  last_active_at: string;
  execution_count: number;
  limits: Limits;
  usage?: Usage | null;
}

export interface Capabilities {
  languages: string[];
  python_version?: string;
  max_timeout_s?: number;
}

export interface FileEntry {
  name: string;
  path: string;
  size: number;
  modified: string;
  kind: "file" | "dir" | "symlink" | "other";
}

export interface FileList {
  path: string;
  entries: FileEntry[];
  truncated: boolean;
}

export type MimeBundle = Record<string, unknown>;

/** One event of a cell, as the SSE stream names it. */
export interface CellEvent {
  event: string;
  data: Record<string, unknown>;
}

export const api = {
  capabilities: () => json<Capabilities>("GET", "/v1/capabilities"),
  listSessions: () => json<{ sessions: Session[] }>("GET", "/v1/sessions"),
  createSession: (language: string) => json<Session>("POST", "/v1/sessions", { language }),
  deleteSession: (id: string) => json<void>("DELETE", `/v1/sessions/${enc(id)}`),
  interrupt: (id: string) => json<{ interrupted: boolean }>("POST", `/v1/sessions/${enc(id)}/interrupt`),
  restart: (id: string) => json<Session>("POST", `/v1/sessions/${enc(id)}/restart`),
  listFiles: (id: string, dir: string) =>
    json<FileList>("GET", `/v1/sessions/${enc(id)}/files?path=${encodeURIComponent(dir)}`),
  deleteFile: (id: string, path: string) =>
    json<void>("DELETE", `/v1/sessions/${enc(id)}/files/${encPath(path)}`),
  async uploadFiles(id: string, dir: string, files: File[]): Promise<{ files: { path: string; size: number }[] }> {
    const form = new FormData();
    for (const f of files) form.append("file", f, f.name);
    const q = dir ? `?path=${encodeURIComponent(dir)}` : "";
    const res = await call("POST", `/v1/sessions/${enc(id)}/files${q}`, { body: form });
    return res.json();
  },
  async downloadFile(id: string, path: string): Promise<Blob> {
    return (await call("GET", `/v1/sessions/${enc(id)}/files/${encPath(path)}`)).blob();
  },
  async notebook(id: string): Promise<Blob> {
    return (await call("GET", `/v1/sessions/${enc(id)}/notebook`)).blob();
  },
  execute,
};

function enc(id: string): string {
  return encodeURIComponent(id);
}

function encPath(path: string): string {
  return path.split("/").map(encodeURIComponent).join("/");
}

/**
 * Run a cell and hand each of its events to `onEvent` as it arrives, in the
 * order the kernel sent them. The stream is SSE over a POST (fetch with a
 * streamed body, parsed by eventsource-parser); a server that answers with
 * one JSON Execution instead is turned into the same events, so the page
 * works with both.
 */
async function execute(
  id: string,
  code: string,
  onEvent: (ev: CellEvent) => void,
  signal?: AbortSignal,
): Promise<void> {
  const res = await call("POST", `/v1/sessions/${enc(id)}/execute`, {
    body: JSON.stringify({ code }),
    headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
    signal,
  });
  const type = res.headers.get("content-type") ?? "";
  if (!type.startsWith("text/event-stream") || !res.body) {
    for (const ev of executionToEvents(await res.json())) onEvent(ev);
    return;
  }
  let sawReply = false;
  const parser = createParser({
    onEvent(msg: EventSourceMessage) {
      let data: Record<string, unknown> = {};
      try {
        data = msg.data ? JSON.parse(msg.data) : {};
      } catch {
        data = { text: msg.data };
      }
      const event = msg.event ?? "message";
      if (event === "execute_reply") sawReply = true;
      onEvent({ event, data });
    },
  });
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    parser.feed(value);
  }
  if (!sawReply) throw new ApiError(0, "stream_cut", "the event stream ended before the cell's reply");
}

/** The JSON Execution of a server without SSE, as the events of a stream. */
export function executionToEvents(x: Record<string, any>): CellEvent[] {
  const out: CellEvent[] = [];
  const outputs: any[] | undefined = x.outputs;
  if (Array.isArray(outputs)) {
    for (const o of outputs) {
      const { type, ...rest } = o;
      out.push({ event: type, data: rest });
    }
  } else {
    if (x.stdout) out.push({ event: "stream", data: { name: "stdout", text: x.stdout } });
    if (x.stderr) out.push({ event: "stream", data: { name: "stderr", text: x.stderr } });
    for (const r of x.results ?? []) {
      out.push({
        event: r.kind === "execute_result" ? "execute_result" : "display_data",
        data: { data: r.data, metadata: r.metadata ?? {}, execution_count: x.execution_count },
      });
    }
    if (x.error && x.status === "error") {
      out.push({
        event: "error",
        data: { ename: x.error.name, evalue: x.error.value, traceback: x.error.traceback ?? [] },
      });
    }
  }
  out.push({
    event: "execute_reply",
    data: {
      status: x.status,
      execution_count: x.execution_count,
      error: x.error,
      files: x.files ?? [],
      truncated: x.truncated,
      state_lost: x.state_lost,
      duration_ms: x.duration_ms,
    },
  });
  return out;
}
