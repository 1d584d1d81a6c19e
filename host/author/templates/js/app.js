// `{{name}}`: a TaskFlow plugin. Payload: {"name": "Ada"} → {"greeting": "Hello, Ada!"}.
import { log, progress } from 'taskflow:plugin/host@{{wit_version}}';

export function process(task) {
  let input;
  try {
    input = JSON.parse(new TextDecoder().decode(task.payload));
  } catch (error) {
    throw { tag: 'invalid-input', val: `the payload is not JSON: ${error.message}` };
  }
  if (typeof input?.name !== 'string' || input.name === '') {
    throw { tag: 'invalid-input', val: 'expected {"name": "..."}' };
  }
  log('info', `greeting ${input.name}`);
  progress(100);
  return new TextEncoder().encode(JSON.stringify({ greeting: `Hello, ${input.name}!` }));
}
