// `render`: a TaskFlow plugin in JavaScript. It fills a text template from
// JSON data: {"template": "Hello, {{user.name}}!{{#items}} {{.}}{{/items}}",
// "data": {...}} → {"text": "...", "language": "javascript"}.
//
// Tags: {{path.to.value}} (strings as they are, anything else as JSON),
// {{#name}}...{{/name}} (once per item of an array, once for any other truthy
// value, never for a falsy one; inside, {{.}} is the item), and a missing
// value is an error unless "strict": false.
import { log, progress } from 'taskflow:plugin/host@0.2.0';

const decoder = new TextDecoder();
const encoder = new TextEncoder();

function invalid(message) {
  return { tag: 'invalid-input', val: message };
}

/** The value at a dotted path, looked up from the innermost context out. */
function lookup(contexts, path) {
  if (path === '.') return contexts[contexts.length - 1];
  for (let i = contexts.length - 1; i >= 0; i--) {
    let value = contexts[i];
    let found = true;
    for (const part of path.split('.')) {
      if (value !== null && typeof value === 'object' && Object.hasOwn(value, part)) {
        value = value[part];
      } else {
        found = false;
        break;
      }
    }
    if (found) return value;
  }
  return undefined;
}

function render(template, contexts, strict) {
  let out = '';
  let rest = template;
  for (;;) {
    const open = rest.indexOf('{{');
    if (open < 0) return out + rest;
    out += rest.slice(0, open);
    const close = rest.indexOf('}}', open);
    if (close < 0) throw invalid('a {{ in the template is never closed with }}');
    const tag = rest.slice(open + 2, close).trim();
    rest = rest.slice(close + 2);
    if (tag.startsWith('#')) {
      const name = tag.slice(1).trim();
      const end = `{{/${name}}}`;
      const endAt = rest.indexOf(end);
      if (endAt < 0) throw invalid(`the section {{#${name}}} has no ${end}`);
      const inner = rest.slice(0, endAt);
      rest = rest.slice(endAt + end.length);
      const value = lookup(contexts, name);
      const items = Array.isArray(value) ? value : value ? [value] : [];
      for (const item of items) out += render(inner, [...contexts, item], strict);
    } else if (tag.startsWith('/')) {
      throw invalid(`{{${tag}}} closes no open section`);
    } else {
      const value = lookup(contexts, tag);
      if (value === undefined) {
        if (strict) throw invalid(`no value for {{${tag}}} in data`);
        continue;
      }
      out += typeof value === 'string' ? value : JSON.stringify(value);
    }
  }
}

export function process(task) {
  let input;
  try {
    input = JSON.parse(decoder.decode(task.payload));
  } catch (error) {
    throw invalid(`the payload is not JSON: ${error.message}`);
  }
  if (input === null || typeof input !== 'object' || typeof input.template !== 'string') {
    throw invalid('expected {"template": "...", "data": {...}}');
  }
  log('info', `rendering a template of ${input.template.length} characters (attempt ${task.attempt})`);
  const text = render(input.template, [input.data ?? {}], input.strict ?? true);
  progress(100);
  return encoder.encode(JSON.stringify({ text, language: 'javascript' }));
}
