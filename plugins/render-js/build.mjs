// Builds app.js into a WebAssembly component for the taskflow:plugin
// processor world: `node build.mjs [OUTPUT] [SOURCE]` (default
// ../dist/render.wasm from app.js; plugins/build.sh also builds the
// JavaScript test fixtures with it).
import { componentize } from '@bytecodealliance/componentize-js';
import { readFile, writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';

const here = (path) => fileURLToPath(new URL(path, import.meta.url));
const output = process.argv[2] ?? here('../dist/render.wasm');
const source = await readFile(process.argv[3] ?? here('app.js'), 'utf8');
const { component } = await componentize(source, {
  witPath: here('../../wit'),
  worldName: 'processor',
  // The sandbox grants none of these: leave them out of the component.
  disableFeatures: ['random', 'stdio', 'clocks', 'http', 'fetch-event'],
});
await writeFile(output, component);
