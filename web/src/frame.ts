// The sandboxed frame a cell's HTML or plotly figure is shown in. It is
// loaded with `sandbox="allow-scripts"` and no allow-same-origin, so its
// origin is opaque: it cannot read the page's storage (the token) or call
// the API as the page, and its own Content-Security-Policy (set by the
// server) refuses inline script, event handlers and any connection. It
// receives its content from the page and tells the page its height.

import "./frame.css";

interface Content {
  kind?: unknown;
  html?: unknown;
  figure?: unknown;
}

let shown = false;

function reportHeight(): void {
  const h = Math.max(document.documentElement.scrollHeight, document.body.scrollHeight);
  window.parent.postMessage({ type: "height", height: h }, "*");
}

new ResizeObserver(reportHeight).observe(document.body);

window.addEventListener("message", async (ev) => {
  // Only the page that holds this frame sends its content, once.
  if (ev.source !== window.parent || shown) return;
  const msg = ev.data as Content;
  if (typeof msg !== "object" || msg === null) return;
  shown = true;
  if (msg.kind === "html" && typeof msg.html === "string") {
    // Scripts set through innerHTML never run, and the CSP refuses inline
    // handlers: the HTML is shown, not executed.
    document.body.innerHTML = msg.html;
  } else if (msg.kind === "plotly" && typeof msg.figure === "object" && msg.figure !== null) {
    const fig = msg.figure as { data?: unknown[]; layout?: Record<string, unknown>; config?: Record<string, unknown> };
    const div = document.createElement("div");
    div.className = "plot";
    document.body.append(div);
    const mod = await import("plotly.js-basic-dist-min");
    const Plotly = (mod as { default?: unknown }).default ?? mod;
    await (Plotly as { newPlot: (...a: unknown[]) => Promise<unknown> }).newPlot(
      div,
      fig.data ?? [],
      { autosize: true, ...(fig.layout ?? {}) },
      { responsive: true, displaylogo: false, ...(fig.config ?? {}) },
    );
  }
  reportHeight();
});

window.parent.postMessage({ type: "ready" }, "*");
