// The Pyxis playground: a token, sessions, a notebook-like column of cells
// whose outputs stream in over SSE, and the session's workspace files.

import "./style.css";
import type { EditorView } from "@codemirror/view";
import { api, ApiError, getToken, setToken, setUnauthorizedHandler, type CellEvent, type FileEntry, type Session } from "./api";
import { createEditor } from "./editor";
import { OutputArea } from "./outputs";

/** How often the session list (state, memory, CPU) is refreshed. */
const POLL_MS = 3000;

function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  props: Record<string, string | boolean | undefined> = {},
  ...children: (Node | string | null | undefined)[]
): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v === undefined || v === false) continue;
    if (k === "class") e.className = String(v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c != null) e.append(c);
  return e;
}

export function formatBytes(n: number): string {
  if (!Number.isFinite(n)) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${i === 0 ? n : n.toFixed(n < 10 ? 1 : 0)} ${units[i]}`;
}

function formatMs(ms: number): string {
  if (ms < 1) return `${ms.toFixed(2)} ms`;
  if (ms < 1000) return `${ms.toFixed(ms < 10 ? 1 : 0)} ms`;
  return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
}

// ---------------------------------------------------------------- layout

const ui = {
  tokenForm: h("form", { class: "token", autocomplete: "off" }),
  tokenInput: h("input", {
    type: "password",
    name: "token",
    placeholder: "API token",
    "aria-label": "API token",
    autocomplete: "off",
    spellcheck: "false",
  }),
  tokenSave: h("button", { type: "submit", class: "primary" }, "Save token"),
  tokenForget: h("button", { type: "button", class: "ghost", title: "Remove the token from this browser" }, "Forget"),
  server: h("span", { class: "server", title: "server" }),
  banner: h("div", { class: "banner", role: "alert", hidden: true }),
  language: h("select", { "aria-label": "language" }),
  newSession: h("button", { class: "primary", type: "button" }, "New session"),
  sessionList: h("ul", { class: "session-list", "aria-label": "sessions" }),
  sessionsEmpty: h("p", { class: "empty" }, "No session yet."),
  title: h("h2", { class: "session-title" }, "No session"),
  sessionState: h("span", { class: "badge" }),
  interrupt: h("button", { type: "button", title: "Interrupt the running cell (KeyboardInterrupt)" }, "Interrupt"),
  restart: h("button", { type: "button", title: "A fresh interpreter, same workspace" }, "Restart"),
  notebook: h("button", { type: "button", title: "Download the session's history as .ipynb" }, "Download .ipynb"),
  cellsHost: h("div", { class: "cells-host" }),
  addCell: h("button", { type: "button", class: "ghost add-cell" }, "+ Add cell"),
  noSession: h(
    "div",
    { class: "placeholder" },
    h("p", {}, "Create a session to start: each one is a sandboxed Python interpreter that keeps its state."),
  ),
  filesPath: h("div", { class: "crumbs" }),
  filesList: h("ul", { class: "file-list", "aria-label": "files" }),
  quota: h("span", { class: "quota" }),
  drop: h("label", { class: "drop" }),
  upload: h("input", { type: "file", multiple: true, "aria-label": "upload files" }),
  filesRefresh: h("button", { type: "button", class: "ghost small", title: "Refresh" }, "↻"),
};

function layout(): void {
  const app = document.getElementById("app")!;
  ui.tokenForm.append(ui.tokenInput, ui.tokenSave, ui.tokenForget);
  ui.drop.append(h("span", {}, "Drop files here or "), h("u", {}, "choose files"), ui.upload);
  app.append(
    h(
      "header",
      { class: "top" },
      h("div", { class: "brand" }, h("span", { class: "logo" }, "◆"), " Pyxis ", h("span", { class: "sub" }, "playground")),
      ui.tokenForm,
      ui.server,
    ),
    ui.banner,
    h(
      "div",
      { class: "layout" },
      h(
        "section",
        { class: "panel sessions", "aria-label": "sessions" },
        h("h2", {}, "Sessions"),
        h("div", { class: "row" }, ui.language, ui.newSession),
        ui.sessionList,
        ui.sessionsEmpty,
      ),
      h(
        "main",
        { class: "notebook" },
        h(
          "div",
          { class: "toolbar" },
          h("div", { class: "title" }, ui.title, ui.sessionState),
          h("div", { class: "actions" }, ui.interrupt, ui.restart, ui.notebook),
        ),
        ui.noSession,
        ui.cellsHost,
        ui.addCell,
        h("p", { class: "hint" }, h("kbd", {}, "Shift"), "+", h("kbd", {}, "Enter"), " runs a cell and moves on, ", h("kbd", {}, "Ctrl"), "+", h("kbd", {}, "Enter"), " runs it in place."),
      ),
      h(
        "section",
        { class: "panel files", "aria-label": "files" },
        h("h2", {}, "Files ", ui.quota, ui.filesRefresh),
        ui.filesPath,
        ui.filesList,
        ui.drop,
      ),
    ),
  );
}

// ---------------------------------------------------------------- state

interface Cell {
  root: HTMLElement;
  editor: EditorView;
  out: OutputArea;
  prompt: HTMLElement;
  status: HTMLElement;
  running: boolean;
}

interface SessionView {
  session: Session;
  cells: Cell[];
  host: HTMLElement;
  running: number;
  /** When the page learnt of it: a list asked for before then may lack it. */
  seenAt: number;
  cpuSample?: { usec: number; at: number; pct?: number };
}

const state = {
  sessions: new Map<string, SessionView>(),
  current: null as string | null,
  dir: "",
  languages: ["python"],
};

function current(): SessionView | null {
  return state.current ? (state.sessions.get(state.current) ?? null) : null;
}

function showBanner(message: string, kind: "error" | "info" = "error"): void {
  ui.banner.textContent = message;
  ui.banner.className = `banner banner-${kind}`;
  ui.banner.hidden = false;
}

function hideBanner(): void {
  ui.banner.hidden = true;
}

function report(err: unknown): void {
  if (err instanceof ApiError && err.status === 401) return; // the 401 banner is shown already
  showBanner(err instanceof Error ? err.message : String(err));
}

setUnauthorizedHandler(() => {
  showBanner(
    getToken()
      ? "The server refused this token (401 Unauthorized). Enter the token printed by `pyxis serve` on its first start (kept in the data directory's `token` file), or the value of PYXIS_TOKEN."
      : "This server needs a token (401 Unauthorized). Enter the token printed by `pyxis serve` on its first start (kept in the data directory's `token` file), or the value of PYXIS_TOKEN.",
  );
  ui.banner.dataset.status = "401";
  ui.tokenInput.focus();
});

// ---------------------------------------------------------------- sessions

function sessionView(s: Session): SessionView {
  let view = state.sessions.get(s.id);
  if (!view) {
    view = { session: s, cells: [], host: h("div", { class: "cells" }), running: 0, seenAt: performance.now() };
    state.sessions.set(s.id, view);
  } else {
    view.session = s;
  }
  const u = s.usage;
  if (u) {
    const now = performance.now();
    const prev = view.cpuSample;
    const pct = prev && now > prev.at ? ((u.cpu_usec - prev.usec) / 1000 / (now - prev.at)) * 100 : undefined;
    view.cpuSample = { usec: u.cpu_usec, at: now, pct: pct ?? prev?.pct };
  }
  return view;
}

function dropSession(id: string): void {
  const view = state.sessions.get(id);
  if (!view) return;
  for (const c of view.cells) c.editor.destroy();
  view.host.remove();
  state.sessions.delete(id);
}

function renderSessions(): void {
  const items: HTMLElement[] = [];
  for (const view of state.sessions.values()) {
    const s = view.session;
    const u = s.usage;
    const st = view.running > 0 ? "busy" : s.state;
    const del = h("button", { type: "button", class: "ghost small danger", title: "Delete this session", "aria-label": `delete session ${s.id}` }, "✕");
    del.addEventListener("click", (e) => {
      e.stopPropagation();
      void deleteSession(s.id);
    });
    const cpu = view.cpuSample;
    const item = h(
      "li",
      { class: `session${s.id === state.current ? " selected" : ""}`, tabindex: "0", "data-id": s.id },
      h(
        "div",
        { class: "session-line" },
        h("span", { class: "sid", title: s.id }, s.id.slice(0, 8)),
        h("span", { class: "lang" }, s.language),
        h("span", { class: `badge state-${st}` }, st),
        del,
      ),
      h(
        "div",
        { class: "usage" },
        h("span", { title: "memory used / limit" }, `mem ${u ? formatBytes(u.memory_bytes) : "–"} / ${formatBytes(s.limits.memory_bytes)}`),
        h(
          "span",
          { title: "CPU time used (and recent CPU use)" },
          `cpu ${u ? (u.cpu_usec / 1e6).toFixed(2) : "–"} s${cpu?.pct !== undefined ? ` · ${Math.max(0, cpu.pct).toFixed(0)}%` : ""}`,
        ),
        h("span", { title: "cells run" }, `${s.execution_count} cells`),
      ),
    );
    item.addEventListener("click", () => select(s.id));
    item.addEventListener("keydown", (e) => {
      if (e.key === "Enter" || e.key === " ") {
        e.preventDefault();
        select(s.id);
      }
    });
    items.push(item);
  }
  ui.sessionList.replaceChildren(...items);
  ui.sessionsEmpty.hidden = items.length > 0;
}

async function refreshSessions(): Promise<void> {
  if (!getToken()) return;
  const asked = performance.now();
  const { sessions } = await api.listSessions();
  const seen = new Set(sessions.map((s) => s.id));
  for (const s of sessions) sessionView(s);
  for (const [id, view] of [...state.sessions.entries()]) {
    // A session created while the list was on its way is not gone.
    if (!seen.has(id) && view.seenAt < asked) {
      dropSession(id);
      if (state.current === id) select(null, "The session is gone (deleted or reaped after being idle).");
    }
  }
  hideBannerIf401();
  renderSessions();
  renderToolbar();
}

function hideBannerIf401(): void {
  if (ui.banner.dataset.status === "401") {
    delete ui.banner.dataset.status;
    hideBanner();
  }
}

async function createSession(): Promise<void> {
  ui.newSession.disabled = true;
  try {
    const s = await api.createSession(ui.language.value || "python");
    sessionView(s);
    hideBannerIf401();
    select(s.id);
  } catch (e) {
    report(e);
  } finally {
    ui.newSession.disabled = false;
  }
}

async function deleteSession(id: string): Promise<void> {
  try {
    await api.deleteSession(id);
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 404)) {
      report(e);
      return;
    }
  }
  dropSession(id);
  if (state.current === id) select(state.sessions.keys().next().value ?? null);
  renderSessions();
}

function select(id: string | null, notice?: string): void {
  state.current = id;
  state.dir = "";
  const view = current();
  // Every session's cells stay in the page (hidden when not shown), so
  // switching back shows them as they were, frames included.
  for (const v of state.sessions.values()) {
    if (v.host.parentElement !== ui.cellsHost) ui.cellsHost.append(v.host);
    v.host.hidden = v !== view;
  }
  ui.noSession.hidden = !!view;
  if (view && view.cells.length === 0) addCell(view);
  ui.addCell.hidden = !view;
  if (notice) showBanner(notice, "info");
  renderSessions();
  renderToolbar();
  void refreshFiles();
  view?.cells[0]?.editor.focus();
}

function renderToolbar(): void {
  const view = current();
  ui.title.textContent = view ? `Session ${view.session.id.slice(0, 8)}` : "No session";
  ui.title.title = view?.session.id ?? "";
  const st = view ? (view.running > 0 ? "busy" : view.session.state) : "";
  ui.sessionState.textContent = view ? `${view.session.language} · ${st}` : "";
  ui.sessionState.className = `badge state-${st}`;
  ui.interrupt.disabled = !view || view.running === 0;
  ui.restart.disabled = !view;
  ui.notebook.disabled = !view;
}

// ---------------------------------------------------------------- cells

function addCell(view: SessionView, code = "", after?: Cell): Cell {
  const prompt = h("span", { class: "prompt" }, "[ ]");
  const run = h("button", { type: "button", class: "run", title: "Run (Shift+Enter)", "aria-label": "run cell" }, "▶");
  const status = h("span", { class: "status" });
  const remove = h("button", { type: "button", class: "ghost small", title: "Remove this cell from the page", "aria-label": "remove cell" }, "✕");
  const editorHost = h("div", { class: "editor" });
  const out = new OutputArea();
  const root = h("div", { class: "cell" }, h("div", { class: "cell-head" }, prompt, run, status, h("span", { class: "spacer" }), remove), editorHost, out.el);
  const cell: Cell = {
    root,
    out,
    prompt,
    status,
    running: false,
    editor: createEditor(editorHost, code, {
      run: (advance) => void runCell(view, cell, advance),
    }),
  };
  run.addEventListener("click", () => void runCell(view, cell, false));
  remove.addEventListener("click", () => {
    view.cells.splice(view.cells.indexOf(cell), 1);
    cell.editor.destroy();
    root.remove();
  });
  const at = after ? view.cells.indexOf(after) + 1 : view.cells.length;
  view.cells.splice(at, 0, cell);
  if (after) after.root.after(root);
  else view.host.append(root);
  return cell;
}

function setStatus(cell: Cell, kind: string, text: string, badges: string[] = []): void {
  cell.root.dataset.state = kind;
  cell.status.replaceChildren(
    h("span", { class: `st st-${kind}` }, text),
    ...badges.map((b) => h("span", { class: "badge warn" }, b)),
  );
}

async function runCell(view: SessionView, cell: Cell, advance: boolean): Promise<void> {
  if (advance) {
    const i = view.cells.indexOf(cell);
    const next = view.cells[i + 1] ?? addCell(view, "", cell);
    next.editor.focus();
  }
  if (cell.running) return;
  const code = cell.editor.state.doc.toString();
  cell.running = true;
  view.running++;
  cell.out.clear();
  cell.prompt.textContent = "[*]";
  const started = performance.now();
  setStatus(cell, "running", "running…");
  const tick = setInterval(() => setStatus(cell, "running", `running… ${formatMs(performance.now() - started)}`), 250);
  renderSessions();
  renderToolbar();
  let reply: Record<string, any> | null = null;
  try {
    await api.execute(view.session.id, code, (ev: CellEvent) => {
      if (ev.event === "execute_reply") reply = ev.data;
      else if (ev.event === "execute_input" && ev.data.execution_count != null)
        cell.prompt.textContent = `[${ev.data.execution_count}]`;
      else cell.out.handle(ev);
    });
  } catch (e) {
    const msg = e instanceof ApiError ? `${e.message}${e.status ? ` (${e.status})` : ""}` : String(e);
    cell.out.notice(msg);
  } finally {
    clearInterval(tick);
    cell.running = false;
    view.running--;
  }
  const r = reply as Record<string, any> | null;
  if (r) {
    cell.prompt.textContent = r.execution_count != null ? `[${r.execution_count}]` : "[ ]";
    const badges: string[] = [];
    if (r.state_lost) badges.push("state lost");
    if (r.truncated) badges.push("output truncated");
    let text = String(r.status);
    if ((r.status === "killed" || r.status === "timeout") && r.error?.name) text += `: ${r.error.name}`;
    if (r.status === "killed" && r.error?.value) cell.out.notice(`${r.error.name}: ${r.error.value}`);
    const ms = typeof r.duration_ms === "number" ? r.duration_ms : performance.now() - started;
    setStatus(cell, String(r.status), `${text} · ${formatMs(ms)}`, badges);
    if (Array.isArray(r.files) && r.files.length && view.session.id === state.current) void refreshFiles();
  } else {
    cell.prompt.textContent = "[ ]";
    setStatus(cell, "failed", "not run");
  }
  void refreshSessions().catch(() => {});
  renderToolbar();
}

// ---------------------------------------------------------------- files

async function refreshFiles(): Promise<void> {
  const view = current();
  ui.drop.hidden = !view;
  ui.filesRefresh.hidden = !view;
  if (!view) {
    ui.filesList.replaceChildren();
    ui.filesPath.replaceChildren(h("span", { class: "empty" }, "No session selected."));
    ui.quota.textContent = "";
    return;
  }
  const id = view.session.id;
  const u = view.session.usage;
  ui.quota.textContent = u ? `${formatBytes(u.disk_bytes)} of ${formatBytes(view.session.limits.disk_bytes)}` : "";
  let list;
  try {
    list = await api.listFiles(id, state.dir);
  } catch (e) {
    if (e instanceof ApiError && e.status === 404 && state.dir) {
      state.dir = "";
      return refreshFiles();
    }
    report(e);
    return;
  }
  if (state.current !== id) return;
  renderCrumbs();
  const rows = list.entries.map((f) => fileRow(id, f));
  if (rows.length === 0) rows.push(h("li", { class: "empty" }, "Empty workspace directory."));
  if (list.truncated) rows.push(h("li", { class: "empty" }, "More entries than shown."));
  ui.filesList.replaceChildren(...rows);
}

function renderCrumbs(): void {
  const parts = state.dir ? state.dir.split("/") : [];
  const crumb = (label: string, dir: string) => {
    const b = h("button", { type: "button", class: "link" }, label);
    b.addEventListener("click", () => {
      state.dir = dir;
      void refreshFiles();
    });
    return b;
  };
  const nodes: Node[] = [crumb("/workspace", "")];
  parts.forEach((p, i) => nodes.push(document.createTextNode(" / "), crumb(p, parts.slice(0, i + 1).join("/"))));
  ui.filesPath.replaceChildren(...nodes);
}

function fileRow(id: string, f: FileEntry): HTMLElement {
  const name =
    f.kind === "dir"
      ? h("button", { type: "button", class: "link name" }, `${f.name}/`)
      : h("span", { class: "name", title: f.path }, f.kind === "symlink" ? `${f.name} →` : f.name);
  if (f.kind === "dir")
    name.addEventListener("click", () => {
      state.dir = f.path;
      void refreshFiles();
    });
  const actions = h("span", { class: "file-actions" });
  if (f.kind === "file") {
    const dl = h("button", { type: "button", class: "ghost small", title: `Download ${f.path}`, "aria-label": `download ${f.path}` }, "↓");
    dl.addEventListener("click", () => void download(id, f));
    actions.append(dl);
  }
  const del = h("button", { type: "button", class: "ghost small danger", title: `Delete ${f.path}`, "aria-label": `delete ${f.path}` }, "✕");
  del.addEventListener("click", async () => {
    try {
      await api.deleteFile(id, f.path);
    } catch (e) {
      report(e);
    }
    void refreshFiles();
  });
  actions.append(del);
  return h(
    "li",
    { class: `file kind-${f.kind}`, "data-path": f.path },
    name,
    h("span", { class: "size" }, f.kind === "dir" ? "" : formatBytes(f.size)),
    actions,
  );
}

function saveBlob(blob: Blob, name: string): void {
  const url = URL.createObjectURL(blob);
  const a = h("a", { href: url, download: name, hidden: true });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

async function download(id: string, f: FileEntry): Promise<void> {
  try {
    saveBlob(await api.downloadFile(id, f.path), f.name);
  } catch (e) {
    report(e);
  }
}

async function upload(files: File[]): Promise<void> {
  const view = current();
  if (!view || files.length === 0) return;
  ui.drop.classList.add("busy");
  try {
    await api.uploadFiles(view.session.id, state.dir, files);
    hideBanner();
  } catch (e) {
    report(e);
  } finally {
    ui.drop.classList.remove("busy");
  }
  await refreshSessions().catch(() => {});
  await refreshFiles();
}

// ---------------------------------------------------------------- wiring

async function loadCapabilities(): Promise<void> {
  try {
    const caps = await api.capabilities();
    if (Array.isArray(caps.languages) && caps.languages.length) state.languages = caps.languages;
    ui.server.textContent = caps.python_version ? `Python ${caps.python_version}` : "connected";
    ui.server.className = "server ok";
    hideBannerIf401();
  } catch (e) {
    ui.server.textContent = e instanceof ApiError && e.status === 401 ? "token needed" : "offline";
    ui.server.className = "server bad";
    if (!(e instanceof ApiError && e.status === 401)) report(e);
  }
  ui.language.replaceChildren(...state.languages.map((l) => h("option", { value: l }, l)));
}

async function connect(): Promise<void> {
  await loadCapabilities();
  await refreshSessions().catch(report);
  if (!state.current && state.sessions.size) select(state.sessions.keys().next().value ?? null);
}

function wire(): void {
  ui.tokenInput.value = getToken();
  ui.tokenForm.addEventListener("submit", (e) => {
    e.preventDefault();
    setToken(ui.tokenInput.value.trim());
    hideBanner();
    void connect();
  });
  ui.tokenForget.addEventListener("click", () => {
    setToken("");
    ui.tokenInput.value = "";
    for (const id of [...state.sessions.keys()]) dropSession(id);
    select(null);
    void loadCapabilities();
  });
  ui.newSession.addEventListener("click", () => void createSession());
  ui.addCell.addEventListener("click", () => {
    const view = current();
    if (view) addCell(view).editor.focus();
  });
  ui.interrupt.addEventListener("click", async () => {
    const view = current();
    if (view) await api.interrupt(view.session.id).catch(report);
  });
  ui.restart.addEventListener("click", async () => {
    const view = current();
    if (!view) return;
    ui.restart.disabled = true;
    try {
      await api.restart(view.session.id);
      for (const c of view.cells) if (!c.running) c.prompt.textContent = "[ ]";
      showBanner("Restarted: a fresh interpreter (variables are gone), same workspace.", "info");
    } catch (e) {
      report(e);
    } finally {
      ui.restart.disabled = false;
    }
    void refreshSessions().catch(() => {});
  });
  ui.notebook.addEventListener("click", async () => {
    const view = current();
    if (!view) return;
    try {
      saveBlob(await api.notebook(view.session.id), `pyxis-${view.session.id.slice(0, 8)}.ipynb`);
    } catch (e) {
      report(e);
    }
  });
  ui.filesRefresh.addEventListener("click", () => void refreshFiles());
  ui.upload.addEventListener("change", () => {
    void upload([...(ui.upload.files ?? [])]);
    ui.upload.value = "";
  });
  const panel = ui.drop.closest(".files") as HTMLElement;
  panel.addEventListener("dragover", (e) => {
    if (!current()) return;
    e.preventDefault();
    panel.classList.add("dragging");
  });
  panel.addEventListener("dragleave", (e) => {
    if (e.target === panel) panel.classList.remove("dragging");
  });
  panel.addEventListener("drop", (e) => {
    e.preventDefault();
    panel.classList.remove("dragging");
    void upload([...(e.dataTransfer?.files ?? [])]);
  });
  setInterval(() => {
    if (getToken() && !document.hidden) void refreshSessions().catch(() => {});
  }, POLL_MS);
}

layout();
wire();
select(null);
void connect();
