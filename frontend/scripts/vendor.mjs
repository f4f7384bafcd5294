// Copies the browser builds of the npm dependencies into static/vendor/ (served by Django).
import { cpSync, mkdirSync, existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const vendor = join(root, "static", "vendor");
const files = {
  "chart.js/dist/chart.umd.min.js": "chart.umd.min.js",
  "swagger-ui-dist/swagger-ui.css": "swagger-ui-dist/swagger-ui.css",
  "swagger-ui-dist/swagger-ui-bundle.js": "swagger-ui-dist/swagger-ui-bundle.js",
  "swagger-ui-dist/swagger-ui-standalone-preset.js": "swagger-ui-dist/swagger-ui-standalone-preset.js",
  "swagger-ui-dist/favicon-32x32.png": "swagger-ui-dist/favicon-32x32.png",
};
for (const [src, dst] of Object.entries(files)) {
  const from = join(root, "node_modules", src);
  if (!existsSync(from)) {
    console.error(`missing ${from}: run 'npm ci' in frontend/`);
    process.exit(1);
  }
  const to = join(vendor, dst);
  mkdirSync(dirname(to), { recursive: true });
  cpSync(from, to);
}
console.log(`vendored ${Object.keys(files).length} files into static/vendor/`);
