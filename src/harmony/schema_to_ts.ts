// JSON Schema to the TypeScript-like type text harmony puts in a tool namespace. The rules follow OpenAI's
// harmony library (the format's authority) quirk for quirk, because the model was trained on its output:
// - `oneOf` becomes a union written one variant per line (` | T // comments`), checked before `type`;
// - `type: [..]` becomes `A | B`; integer is number; string enums are unions of quoted literals;
// - objects are written inline; each property may carry `// title` + `//`, `// description`, `// Examples:`
//   lines above it, a `?` when not required, and its default as a trailing `// default: ..` comment;
// - nested values are indented by four more spaces (the closing brace too), union variants by three;
// - `anyOf`, `allOf`, `const`, `$ref`, `null` and missing types all become `any` (the library has no rule for them).
// Object keys keep their insertion order, as the library's order-preserving JSON map does.

type Schema = { [key: string]: unknown };

function isObject(v: unknown): v is Schema {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function get(schema: unknown, key: string): unknown {
  return isObject(schema) ? schema[key] : undefined;
}

function str(v: unknown): string | undefined {
  return typeof v === 'string' ? v : undefined;
}

/** Compact JSON as serde_json writes it (integral numbers stay integral; JavaScript cannot tell 1.0 from 1). */
function json(v: unknown): string {
  return JSON.stringify(v);
}

function isEnum(schema: unknown): boolean {
  const e = get(schema, 'enum');
  return Array.isArray(e) && e.length > 0;
}

function isNullable(schema: unknown): boolean {
  return get(schema, 'nullable') === true;
}

/** `T | null` for a nullable schema whose type text does not already mention null. */
function withNullable(typeText: string, schema: unknown): string {
  return isNullable(schema) && !typeText.includes('null') ? `${typeText} | null` : typeText;
}

/**
 * The default as a comment body. A string default is quoted unless the schema is an enum (then it is written
 * bare) — except in a union variant of a top-level `oneOf`, where an enum's string default is JSON-quoted.
 */
function defaultComment(schema: unknown, fallbackJsonForEnumString: boolean): string | undefined {
  if (!isObject(schema) || !('default' in schema)) return undefined;
  const d = schema.default;
  if (typeof d === 'string') {
    if (!isEnum(schema)) return `default: "${d}"`;
    return fallbackJsonForEnumString ? `default: ${json(d)}` : `default: ${d}`;
  }
  return `default: ${json(d)}`;
}

/** A `oneOf` that is the whole schema: `\n{indent} | T // comments` per variant. */
function topLevelOneOf(variants: unknown[], indent: string): string {
  let out = '';
  for (const variant of variants) {
    out += `\n${indent} | `;
    out += withNullable(schemaToTypeScript(variant, `${indent}   `), variant);
    const comments: string[] = [];
    const desc = str(get(variant, 'description'));
    if (desc !== undefined) comments.push(desc);
    const dflt = defaultComment(variant, true);
    if (dflt !== undefined) comments.push(dflt);
    if (comments.length) out += ` // ${comments.join(' ')}`;
  }
  return out;
}

/** A property whose schema is a `oneOf`: comments and name on their own lines, then one line per variant. */
function oneOfProperty(key: string, val: Schema, variants: unknown[], optional: string, indent: string): string {
  let out = '';
  const propertyDesc = str(val.description);
  const firstDesc = str(get(variants[0], 'description'));
  let descAbove = false;
  if (propertyDesc !== undefined && propertyDesc !== firstDesc) {
    out += `${indent}// ${propertyDesc}\n`;
    descAbove = true;
  }
  const dflt = defaultComment(val, false);
  if (dflt !== undefined) out += `${indent}// ${dflt}\n`;
  out += `${indent}${key}${optional}:\n`;
  variants.forEach((variant, i) => {
    out += `${indent} | ${withNullable(schemaToTypeScript(variant, `${indent}   `), variant)}`;
    const comments: string[] = [];
    const desc = str(get(variant, 'description'));
    if (!(i === 0 && descAbove) && desc !== undefined && desc !== propertyDesc) comments.push(desc);
    const vd = defaultComment(variant, false);
    if (vd !== undefined) comments.push(vd);
    if (comments.length) out += ` // ${comments.join(' ')}`;
    out += '\n';
  });
  out += `${indent},\n`;
  return out;
}

function objectType(schema: Schema, indent: string): string {
  let out = '';
  const desc = str(schema.description);
  if (desc !== undefined) out += `${indent}// ${desc}\n`;
  out += '{\n';
  const props = schema.properties;
  if (isObject(props)) {
    const required = new Set(Array.isArray(schema.required) ? schema.required.filter((r) => typeof r === 'string') : []);
    for (const [key, val] of Object.entries(props)) {
      const optional = required.has(key) ? '' : '?';
      const title = str(get(val, 'title'));
      if (title !== undefined) out += `${indent}// ${title}\n${indent}//\n`;
      const oneOf = get(val, 'oneOf');
      if (oneOf === undefined) {
        const d = str(get(val, 'description'));
        if (d !== undefined) out += `${indent}// ${d}\n`;
      }
      const examples = get(val, 'examples');
      if (Array.isArray(examples) && examples.length) {
        out += `${indent}// Examples:\n`;
        for (const ex of examples) if (typeof ex === 'string') out += `${indent}// - "${ex}"\n`;
      }
      if (Array.isArray(oneOf) && isObject(val)) {
        out += oneOfProperty(key, val, oneOf, optional, indent);
        continue;
      }
      out += `${indent}${key}${optional}: ${withNullable(schemaToTypeScript(val, `${indent}    `), val)},`;
      if (oneOf === undefined) {
        const dflt = defaultComment(val, false);
        if (dflt !== undefined) out += ` // ${dflt}`;
      }
      out += '\n';
    }
  }
  out += `${indent}}`;
  return out;
}

/** The type text for a JSON Schema, as harmony writes it inside `type name = (_: ...) => any;`. */
export function schemaToTypeScript(schema: unknown, indent = ''): string {
  const oneOf = get(schema, 'oneOf');
  if (Array.isArray(oneOf)) return topLevelOneOf(oneOf, indent);

  const type = get(schema, 'type');
  if (Array.isArray(type)) {
    const names = type.filter((t): t is string => typeof t === 'string').map((t) => (t === 'integer' ? 'number' : t));
    if (names.length) return names.join(' | ');
    return 'any';
  }
  if (typeof type !== 'string' || !isObject(schema)) return 'any';
  switch (type) {
    case 'object':
      return objectType(schema, indent);
    case 'string': {
      const e = schema.enum;
      if (Array.isArray(e)) {
        const literals = e.filter((v): v is string => typeof v === 'string').map((v) => `"${v}"`);
        if (literals.length) return literals.join(' | ');
      }
      return 'string';
    }
    case 'number':
    case 'integer':
      return 'number';
    case 'boolean':
      return 'boolean';
    case 'array':
      return 'items' in schema ? `${schemaToTypeScript(schema.items, indent)}[]` : 'Array<any>';
    default:
      return 'any';
  }
}
