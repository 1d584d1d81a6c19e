// Builds app.js into a TaskFlow plugin component: `node build.mjs [OUTPUT]`.
import { componentize } from '@bytecodealliance/componentize-js';
import { readFile, writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';

const here = (path) => fileURLToPath(new URL(path, import.meta.url));
const output = process.argv[2] ?? here('{{name}}.wasm');
const source = await readFile(here('app.js'), 'utf8');
const { component } = await componentize(source, {
  witPath: here('wit'),
  worldName: 'processor',
  disableFeatures: ['random', 'stdio', 'clocks', 'http', 'fetch-event'],
});
await writeFile(output, component);
