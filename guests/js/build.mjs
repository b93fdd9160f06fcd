// Builds the JavaScript example functions into components:
//   node build.mjs OUT_DIR
// writes OUT_DIR/js-hello.wasm and OUT_DIR/js-order-processor.wasm.
import { componentize } from "@bytecodealliance/componentize-js";
import { mkdir, writeFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import path from "node:path";

const here = path.dirname(fileURLToPath(import.meta.url));
const wit = path.join(here, "../../wit");
const out = process.argv[2] ?? path.join(here, "../../target/polyglot");
await mkdir(out, { recursive: true });

const guests = [
  { name: "js-hello", source: "hello/app.js", world: "wasi:http/proxy@0.2.12" },
  { name: "js-order-processor", source: "order-processor/app.js", world: "sluice:function/event-function" },
];
for (const guest of guests) {
  const started = Date.now();
  const { component } = await componentize({
    sourcePath: path.join(here, guest.source),
    witPath: wit,
    worldName: guest.world,
  });
  const file = path.join(out, `${guest.name}.wasm`);
  await writeFile(file, component);
  console.log(`${file}: ${(component.length / 1e6).toFixed(1)} MB in ${((Date.now() - started) / 1000).toFixed(1)} s`);
}
