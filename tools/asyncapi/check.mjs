// Parses an AsyncAPI document with the official parser; prints its diagnostics as JSON lines
// and exits 1 when any has severity "error" (0), so the Python test can show them all.
import { Parser, fromFile } from '@asyncapi/parser';

const path = process.argv[2];
if (!path) {
  console.error('usage: node check.mjs ASYNCAPI.yaml');
  process.exit(2);
}
const parser = new Parser();
const { document, diagnostics } = await fromFile(parser, path).parse();
for (const d of diagnostics) {
  console.log(JSON.stringify({ severity: d.severity, code: d.code, message: d.message, path: d.path }));
}
const errors = diagnostics.filter((d) => d.severity === 0).length;
console.log(JSON.stringify({ parsed: document !== undefined, errors }));
process.exit(errors === 0 && document !== undefined ? 0 : 1);
