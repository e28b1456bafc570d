// The playground is two pages: the app (index.html) and the sandboxed frame
// that renders a cell's HTML and plotly outputs (frame.html). `npm run dev`
// proxies the API to a running `pyxis serve` (PYXIS_URL, default :8080).
import { resolve } from "node:path";
import { defineConfig } from "vite";

const api = process.env.PYXIS_URL ?? "http://127.0.0.1:8080";

export default defineConfig({
  base: "/",
  build: {
    outDir: "dist",
    emptyOutDir: true,
    // Assets are compiled into the pyxis binary: keep them few and without
    // source maps.
    sourcemap: false,
    chunkSizeWarningLimit: 2000,
    modulePreload: { polyfill: false },
    rollupOptions: {
      input: {
        main: resolve(import.meta.dirname, "index.html"),
        frame: resolve(import.meta.dirname, "frame.html"),
      },
    },
  },
  // The cell frame has an opaque origin, so it loads its module scripts
  // with CORS: the dev and preview servers allow any origin (pyxis itself
  // sends Access-Control-Allow-Origin: * on the public assets only).
  server: {
    proxy: { "/v1": api, "/healthz": api, "/readyz": api },
    cors: { origin: "*" },
  },
  preview: {
    proxy: { "/v1": api, "/healthz": api, "/readyz": api },
    cors: { origin: "*" },
  },
});
