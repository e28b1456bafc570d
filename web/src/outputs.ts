// A cell's output area: the kernel's events rendered in the order they
// arrive. Text and tracebacks are escaped (ANSI colours become spans);
// images are <img> from data: URLs (an SVG in an <img> cannot run script);
// HTML and plotly figures go into a sandboxed frame of an opaque origin
// (frame.html, `sandbox="allow-scripts"` without allow-same-origin), so
// nothing a cell sends can reach the page, its storage or the token.

import { AnsiUp } from "ansi_up";
import type { CellEvent, MimeBundle } from "./api";

const ansi = new AnsiUp();
ansi.use_classes = true;

/** Tallest a frame grows before it scrolls inside. */
const MAX_FRAME_HEIGHT = 1600;

export function ansiToHtml(text: string): string {
  return ansi.ansi_to_html(text);
}

function el<K extends keyof HTMLElementTagNameMap>(tag: K, cls?: string): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  return e;
}

// Frames say when they are ready and how tall their content is. A message
// is matched to its frame by its window (a frame moved in the page gets a
// new one), and only those two shapes are read.
const frameContent = new WeakMap<HTMLIFrameElement, unknown>();
window.addEventListener("message", (ev) => {
  if (!ev.source || typeof ev.data !== "object" || ev.data === null) return;
  let frame: HTMLIFrameElement | undefined;
  for (const f of document.querySelectorAll<HTMLIFrameElement>("iframe.frame")) {
    if (f.contentWindow === ev.source) {
      frame = f;
      break;
    }
  }
  if (!frame || !frameContent.has(frame)) return;
  const msg = ev.data as { type?: unknown; height?: unknown };
  if (msg.type === "ready") {
    // The frame's origin is opaque: "*" is the only target that reaches it,
    // and what is sent is the cell's own output.
    frame.contentWindow?.postMessage(frameContent.get(frame), "*");
  } else if (msg.type === "height" && typeof msg.height === "number" && Number.isFinite(msg.height)) {
    const h = Math.max(24, Math.min(MAX_FRAME_HEIGHT, Math.ceil(msg.height)));
    frame.style.height = `${h}px`;
  }
});

function sandboxFrame(message: { kind: "html"; html: string } | { kind: "plotly"; figure: unknown }): HTMLElement {
  const frame = el("iframe", `frame frame-${message.kind}`);
  frame.setAttribute("sandbox", "allow-scripts");
  frame.setAttribute("referrerpolicy", "no-referrer");
  frame.setAttribute("title", message.kind === "html" ? "HTML output" : "plotly figure");
  frame.style.height = message.kind === "plotly" ? "460px" : "48px";
  frameContent.set(frame, message);
  frame.src = "/frame.html";
  return frame;
}

function text(value: unknown): string {
  if (Array.isArray(value)) return value.join("");
  return typeof value === "string" ? value : JSON.stringify(value);
}

/** Render the richest part of a MIME bundle that the page shows safely. */
export function renderBundle(data: MimeBundle): HTMLElement {
  const box = el("div", "mime");
  const plotly = data["application/vnd.plotly.v1+json"];
  if (plotly && typeof plotly === "object") {
    box.append(sandboxFrame({ kind: "plotly", figure: plotly }));
    return box;
  }
  if (typeof data["text/html"] === "string" || Array.isArray(data["text/html"])) {
    box.append(sandboxFrame({ kind: "html", html: text(data["text/html"]) }));
    return box;
  }
  for (const mime of ["image/png", "image/jpeg", "image/gif", "image/webp"]) {
    const b64 = data[mime];
    if (typeof b64 === "string") {
      const img = el("img", "image");
      img.alt = text(data["text/plain"] ?? "image");
      img.src = `data:${mime};base64,${b64.replace(/\s+/g, "")}`;
      box.append(img);
      return box;
    }
  }
  const svg = data["image/svg+xml"];
  if (svg !== undefined) {
    const img = el("img", "image");
    img.alt = "SVG image";
    img.src = `data:image/svg+xml;charset=utf-8,${encodeURIComponent(text(svg))}`;
    box.append(img);
    return box;
  }
  if (data["application/json"] !== undefined) {
    const pre = el("pre", "json");
    pre.textContent = JSON.stringify(data["application/json"], null, 2);
    box.append(pre);
    return box;
  }
  const plain = data["text/plain"] ?? data["text/markdown"] ?? data["text/latex"];
  const pre = el("pre", "plain");
  if (plain !== undefined) pre.innerHTML = ansiToHtml(text(plain));
  else pre.textContent = `[${Object.keys(data).join(", ") || "empty"} output]`;
  box.append(pre);
  return box;
}

export class OutputArea {
  readonly el = el("div", "outputs");
  private displays = new Map<string, HTMLElement[]>();
  private clearOnNext = false;
  private lastStream: { name: string; pre: HTMLPreElement; text: string } | null = null;

  clear(): void {
    this.el.replaceChildren();
    this.displays.clear();
    this.lastStream = null;
    this.clearOnNext = false;
  }

  private append(node: HTMLElement): void {
    if (this.clearOnNext) this.clear();
    this.el.append(node);
  }

  /** Show a message of the page itself (not the kernel's). */
  notice(message: string, kind: "error" | "info" = "error"): void {
    const p = el("div", `notice notice-${kind}`);
    p.textContent = message;
    this.append(p);
    this.lastStream = null;
  }

  handle(ev: CellEvent): void {
    const d = ev.data as Record<string, any>;
    switch (ev.event) {
      case "stream": {
        const name = d.name === "stderr" ? "stderr" : "stdout";
        if (this.clearOnNext) this.clear();
        const last = this.lastStream;
        if (last && last.name === name && this.el.lastElementChild === last.pre) {
          last.text += text(d.text);
          last.pre.innerHTML = ansiToHtml(last.text);
        } else {
          const pre = el("pre", `stream ${name}`);
          const t = text(d.text);
          pre.innerHTML = ansiToHtml(t);
          this.append(pre);
          this.lastStream = { name, pre, text: t };
        }
        break;
      }
      case "display_data":
      case "execute_result": {
        const node = this.bundle(ev.event, d);
        this.append(node);
        this.lastStream = null;
        const id = d.transient?.display_id;
        if (typeof id === "string") {
          const list = this.displays.get(id) ?? [];
          list.push(node);
          this.displays.set(id, list);
        }
        break;
      }
      case "update_display_data": {
        const id = d.transient?.display_id;
        for (const old of (typeof id === "string" && this.displays.get(id)) || []) {
          const fresh = this.bundle("display_data", d);
          old.replaceChildren(...fresh.childNodes);
        }
        break;
      }
      case "clear_output":
        if (d.wait) this.clearOnNext = true;
        else this.clear();
        break;
      case "error": {
        const pre = el("pre", "traceback");
        const tb: string[] = Array.isArray(d.traceback) && d.traceback.length ? d.traceback : [`${d.ename}: ${d.evalue}`];
        pre.innerHTML = ansiToHtml(tb.join("\n"));
        this.append(pre);
        this.lastStream = null;
        break;
      }
      default:
        break;
    }
  }

  private bundle(kind: string, d: Record<string, any>): HTMLElement {
    const wrap = el("div", `output ${kind}`);
    if (kind === "execute_result" && d.execution_count != null) {
      const p = el("span", "out-prompt");
      p.textContent = `Out[${d.execution_count}]`;
      wrap.append(p);
    }
    wrap.append(renderBundle((d.data ?? {}) as MimeBundle));
    return wrap;
  }
}
