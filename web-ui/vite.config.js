// Builds the console into dist/, which the control plane serves on its API port.
// The control plane's Content-Security-Policy allows scripts only from files of its own
// origin, so nothing may be inlined into index.html and nothing comes from a CDN.
import { defineConfig } from "vite";

export default defineConfig({
  base: "/",
  build: {
    outDir: "dist",
    emptyOutDir: true,
    target: "es2022",
    modulePreload: { polyfill: false },
    assetsInlineLimit: 0,
    sourcemap: false,
    chunkSizeWarningLimit: 600,
  },
  server: {
    // `npm run dev`: the API calls go to a control plane on the default port.
    proxy: {
      "/sidecar.v1.AdminService": { target: process.env.SIDECAR_CONTROL_URL ?? "http://127.0.0.1:9290" },
    },
  },
});
