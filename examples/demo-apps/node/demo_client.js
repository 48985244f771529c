#!/usr/bin/env node
// A plain @grpc/grpc-js client for the demo's UserService: no Reprise code, the service loaded
// at run time with @grpc/proto-loader from the repository's proto/demo/v1/demo.proto. It proves
// an unmodified Node app gets one correct stream through the sidecar; the twin of
// ../python/demo_client.py.
//
//     node demo_client.js users [--target HOST:PORT | http://HOST:PORT] [--role R] [--limit N]
//         [--after ID] [--label K=V]... [--metadata K=V]... [--timeout SECONDS]
//         [--expect-users N] [--skip ID]... [--record FILE] [--slow-us N] [--proto-root DIR]
//
// Prints one JSON line (the same summary as the Rust demo-client and the Python client) and
// exits 0 iff the stream was exactly right, 1 if not, 2 on a usage or local error.
//
// Setup: `npm ci` in this directory (the versions are pinned in package.json and
// package-lock.json).

'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');

const PROG = 'demo_client.js';
const DEFAULT_PROTO_ROOT = path.normalize(path.join(__dirname, '..', '..', '..', 'proto'));
const DEFAULT_TARGET = '127.0.0.1:15001';

const USAGE = `usage: node ${PROG} [--proto-root DIR] users [--target HOST:PORT] [--role R] [--limit N]
           [--after ID] [--label K=V]... [--metadata K=V]... [--timeout SECONDS]
           [--expect-users N] [--skip ID]... [--record FILE] [--slow-us N]

ListUsers, checked for order, duplicates and (with --expect-users) exactness.

  --proto-root DIR    directory holding demo/v1/demo.proto (default: the repository's proto/)
  --target HOST:PORT  the server or sidecar (default ${DEFAULT_TARGET}; http:// is accepted)
  --role R            only users of this role
  --limit N           at most N users (0 = all)
  --after ID          strictly after this user_id
  --label K=V         a request label (repeatable)
  --metadata K=V      request metadata (repeatable; keys ending in -bin are binary)
  --timeout SECONDS   a deadline over the whole call
  --expect-users N    check against the server's database of N users
  --skip ID           an id the server skips (repeatable; with --expect-users)
  --record FILE       append each user_id as it arrives, one write per line
  --slow-us N         sleep N microseconds after every message (a slow consumer)
`;

// The user generator, identical to the Rust one (reprise_demo::users) and the Python one.
const ROLES = ['admin', 'member', 'guest'];
const CREATED_AT_BASE = 1700000000;

class UsageError extends Error {}
class LocalError extends Error {}

/** First 16 bytes of SHA-256("user-{index}") as an RFC 9562 version-8 UUID. */
function userId(index) {
  const raw = crypto.createHash('sha256').update(`user-${index}`, 'ascii').digest().subarray(0, 16);
  raw[6] = (raw[6] & 0x0f) | 0x80;
  raw[8] = (raw[8] & 0x3f) | 0x80;
  const h = raw.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20, 32)}`;
}

/** Bytewise (UTF-8) comparison, the Rust order; for ASCII it is plain string order. */
function compareIds(a, b) {
  if (/^[\x00-\x7f]*$/.test(a) && /^[\x00-\x7f]*$/.test(b)) {
    return a < b ? -1 : a > b ? 1 : 0;
  }
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}

/** The first n users as [user_id, name, email, role, created_at], sorted by user_id. */
function demoUsers(n) {
  const users = [];
  for (let i = 0; i < n; i++) {
    // created_at as a decimal string: the int64 as proto-loader gives it (longs: String).
    users.push([userId(i), `User ${i}`, `user${i}@example.com`, ROLES[i % 3], String(CREATED_AT_BASE + 60 * i)]);
  }
  // The ids are ASCII hex: string order is the Rust bytewise order.
  users.sort((x, y) => (x[0] < y[0] ? -1 : x[0] > y[0] ? 1 : 0));
  return users;
}

/** Index of the first user whose id is strictly above `after` (Python's bisect_right). */
function bisectRight(users, after) {
  let lo = 0;
  let hi = users.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (compareIds(after, users[mid][0]) < 0) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

function expectedUserIds(users, role, after, limit, skip) {
  const start = after ? bisectRight(users, after) : 0;
  const out = [];
  for (let i = start; i < users.length; i++) {
    const u = users[i];
    if (role && u[3] !== role) continue;
    if (skip.has(u[0])) continue;
    out.push(u[0]);
    if (limit && out.length >= limit) break;
  }
  return out;
}

/**
 * Application metadata as JSON: binary (-bin) values as hex, repeated keys joined with ", ".
 * Protocol keys (content-type, grpc-*) are left out, as grpcio and the Rust client leave them out.
 */
function metadataJson(metadata) {
  const out = {};
  if (!metadata) return out;
  for (const [key, values] of Object.entries(metadata.toJSON())) {
    if (key === 'content-type' || key.startsWith('grpc-') || key.startsWith(':')) continue;
    for (const value of values) {
      const text = Buffer.isBuffer(value) ? value.toString('hex') : String(value);
      out[key] = Object.prototype.hasOwnProperty.call(out, key) ? `${out[key]}, ${text}` : text;
    }
  }
  return out;
}

function keyValue(option, text) {
  const at = text.indexOf('=');
  if (at < 0) throw new UsageError(`argument ${option}: expected key=value, got ${JSON.stringify(text)}`);
  return [text.slice(0, at), text.slice(at + 1)];
}

function integer(option, text, max) {
  if (!/^\s*[+-]?\d+\s*$/.test(text)) {
    throw new UsageError(`argument ${option}: invalid int value: ${JSON.stringify(text)}`);
  }
  const n = Number(text);
  if (!Number.isSafeInteger(n) || n < 0 || n > max) {
    throw new UsageError(`argument ${option}: must be an integer in 0..${max}, got ${text}`);
  }
  return n;
}

function seconds(option, text) {
  const n = Number(text);
  if (text.trim() === '' || !Number.isFinite(n) || n < 0) {
    throw new UsageError(`argument ${option}: invalid number of seconds: ${JSON.stringify(text)}`);
  }
  return n;
}

/** Parses argv by hand, argparse-style: `--opt VALUE` or `--opt=VALUE`, options in any order. */
function parseArgs(argv) {
  const args = {
    protoRoot: DEFAULT_PROTO_ROOT,
    command: null,
    target: DEFAULT_TARGET,
    role: '',
    limit: 0,
    after: '',
    label: [],
    metadata: [],
    timeout: null,
    expectUsers: null,
    skip: [],
    record: null,
    slowUs: 0,
  };
  const takesValue = new Set([
    '--proto-root', '--target', '--role', '--limit', '--after', '--label', '--metadata',
    '--timeout', '--expect-users', '--skip', '--record', '--slow-us',
  ]);
  for (let i = 0; i < argv.length; i++) {
    let arg = argv[i];
    if (arg === '-h' || arg === '--help') {
      process.stdout.write(USAGE);
      process.exit(0);
    }
    if (!arg.startsWith('--') || arg === '--') {
      if (args.command === null && arg === 'users') {
        args.command = arg;
        continue;
      }
      throw new UsageError(args.command === null
        ? `invalid command ${JSON.stringify(arg)} (choose from 'users')`
        : `unrecognized argument: ${arg}`);
    }
    let value;
    const eq = arg.indexOf('=');
    if (eq >= 0) {
      value = arg.slice(eq + 1);
      arg = arg.slice(0, eq);
    }
    if (!takesValue.has(arg)) throw new UsageError(`unrecognized argument: ${arg}`);
    if (arg !== '--proto-root' && args.command === null) {
      throw new UsageError(`${arg} belongs after the command (users)`);
    }
    if (value === undefined) {
      if (i + 1 >= argv.length) throw new UsageError(`argument ${arg}: expected one argument`);
      value = argv[++i];
    }
    switch (arg) {
      case '--proto-root': args.protoRoot = value; break;
      case '--target': args.target = value; break;
      case '--role': args.role = value; break;
      case '--limit': args.limit = integer(arg, value, 0xffffffff); break;
      case '--after': args.after = value; break;
      case '--label': args.label.push(keyValue(arg, value)); break;
      case '--metadata': args.metadata.push(keyValue(arg, value)); break;
      case '--timeout': args.timeout = seconds(arg, value); break;
      case '--expect-users': args.expectUsers = integer(arg, value, 100000000); break;
      case '--skip': args.skip.push(value); break;
      case '--record': args.record = value; break;
      case '--slow-us': args.slowUs = integer(arg, value, 3600 * 1e6); break;
      default: throw new UsageError(`unrecognized argument: ${arg}`);
    }
  }
  if (args.command === null) throw new UsageError('the following arguments are required: command');
  // Accept the Rust client's URL form too; grpc-js wants host:port (or dns:///host:port).
  if (args.target.startsWith('http://')) args.target = args.target.slice('http://'.length);
  return args;
}

function loadLibraries() {
  try {
    return { grpc: require('@grpc/grpc-js'), protoLoader: require('@grpc/proto-loader') };
  } catch (err) {
    throw new LocalError(`${err.message}\n(run \`npm ci\` in ${__dirname})`);
  }
}

function loadService(grpc, protoLoader, protoRoot) {
  if (!fs.existsSync(path.join(protoRoot, 'demo', 'v1', 'demo.proto'))) {
    throw new LocalError(`no demo/v1/demo.proto under ${protoRoot}`);
  }
  const definition = protoLoader.loadSync('demo/v1/demo.proto', {
    includeDirs: [protoRoot],
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).demo.v1.UserService;
}

/** gRPC code number -> canonical name (OK, UNAVAILABLE, ...), from grpc-js's own enum. */
function codeName(grpc, code) {
  for (const [name, value] of Object.entries(grpc.status)) {
    if (value === code) return name;
  }
  return 'UNKNOWN';
}

/** Streams ListUsers and resolves to the summary; rejects only on local problems. */
function runUsers(args, grpc, UserService) {
  const skip = new Set(args.skip);
  let expected = null;
  let byId = null;
  if (args.expectUsers !== null) {
    const users = demoUsers(args.expectUsers);
    expected = expectedUserIds(users, args.role, args.after, args.limit, skip);
    byId = new Map(users.map((u) => [u[0], u]));
  }
  let record = null;
  if (args.record) {
    try {
      record = fs.openSync(args.record, 'a');
    } catch (err) {
      throw new LocalError(err.message);
    }
  }

  const summary = {
    kind: 'users',
    received: 0,
    duplicates: 0,
    out_of_order: 0,
    missing: 0,
    unexpected: 0,
    corrupt: 0,
    first: '',
    last: '',
    status: 'OK',
    message: '',
    elapsed_ms: 0,
    ok: false,
    headers: {},
    trailers: {},
  };
  const seen = new Set();
  let highest = null;
  let notAfter = 0;

  const request = {
    after_user_id: args.after,
    role: args.role,
    limit: args.limit,
    labels: Object.fromEntries(args.label),
  };
  const metadata = new grpc.Metadata();
  for (const [k, v] of args.metadata) {
    const key = k.toLowerCase();
    try {
      metadata.add(key, key.endsWith('-bin') ? Buffer.from(v, 'utf8') : v);
    } catch (err) {
      throw new UsageError(`argument --metadata: ${err.message}`);
    }
  }
  const options = {};
  if (args.timeout !== null) options.deadline = Date.now() + args.timeout * 1000;
  // Timers have millisecond resolution: the sleep is rounded up, as tokio's is.
  const slowMs = args.slowUs > 0 ? Math.ceil(args.slowUs / 1000) : 0;

  const started = process.hrtime.bigint();
  let client;
  try {
    client = new UserService(args.target, grpc.credentials.createInsecure());
  } catch (err) {
    throw new LocalError(`--target ${args.target}: ${err.message}`);
  }

  return new Promise((resolve, reject) => {
    const call = client.listUsers(request, metadata, options);
    let status = null;
    let ended = false;
    let failed = null;
    let done = false;

    const finish = () => {
      if (done || failed || status === null || !ended) return;
      done = true;
      if (record !== null) fs.closeSync(record);
      client.close();
      summary.status = codeName(grpc, status.code);
      summary.message = summary.status === 'OK' ? '' : status.details || '';
      summary.trailers = metadataJson(status.metadata);
      if (expected !== null) {
        summary.missing = expected.filter((uid) => !seen.has(uid)).length;
        const expectedSet = new Set(expected);
        summary.unexpected = [...seen].filter((uid) => !expectedSet.has(uid)).length;
      } else {
        summary.unexpected = notAfter;
      }
      summary.elapsed_ms = Number((process.hrtime.bigint() - started) / 1000000n);
      summary.ok = summary.status === 'OK'
        && ['duplicates', 'out_of_order', 'missing', 'unexpected', 'corrupt'].every((k) => summary[k] === 0);
      resolve(summary);
    };

    call.on('metadata', (md) => {
      summary.headers = metadataJson(md);
    });
    call.on('data', (user) => {
      if (failed) return;
      const uid = user.user_id;
      if (record !== null) {
        try {
          // One write per line, before anything else: what a killed client read is on disk.
          fs.writeSync(record, `${uid}\n`);
        } catch (err) {
          failed = err;
          call.cancel();
          client.close();
          reject(new LocalError(`writing ${args.record}: ${err.message}`));
          return;
        }
      }
      if (summary.received === 0) summary.first = uid;
      summary.received += 1;
      summary.last = uid;
      const wrongRole = Boolean(args.role) && user.role !== args.role;
      const want = byId !== null ? byId.get(uid) : undefined;
      if (wrongRole || (want !== undefined && (want[1] !== user.name || want[2] !== user.email
        || want[3] !== user.role || want[4] !== String(user.created_at)))) {
        summary.corrupt += 1;
      }
      if (seen.has(uid)) {
        summary.duplicates += 1;
      } else {
        if (highest !== null && compareIds(uid, highest) <= 0) {
          summary.out_of_order += 1;
        } else {
          highest = uid;
        }
        if (args.after && compareIds(uid, args.after) <= 0) notAfter += 1;
        seen.add(uid);
      }
      if (slowMs > 0) {
        // A slow consumer: nothing is read while it sleeps, so HTTP/2 flow control applies.
        call.pause();
        setTimeout(() => call.resume(), slowMs);
      }
    });
    // The status is in the 'status' event too; an 'error' listener keeps it from throwing.
    call.on('error', () => {});
    call.on('status', (s) => {
      status = s;
      finish();
    });
    // Messages that arrived before the status are still buffered until 'end'.
    call.on('end', () => {
      ended = true;
      finish();
    });
    call.on('close', () => {
      ended = true;
      finish();
    });
  });
}

function main() {
  let args;
  try {
    args = parseArgs(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`${USAGE}${PROG}: error: ${err.message}\n`);
    return Promise.resolve(2);
  }
  return Promise.resolve()
    .then(() => {
      const { grpc, protoLoader } = loadLibraries();
      let UserService;
      try {
        UserService = loadService(grpc, protoLoader, args.protoRoot);
      } catch (err) {
        throw err instanceof LocalError ? err : new LocalError(`loading demo.proto: ${err.message}`);
      }
      return runUsers(args, grpc, UserService);
    })
    .then(
      (summary) => new Promise((resolve) => {
        process.stdout.write(`${JSON.stringify(summary)}\n`, () => resolve(summary.ok ? 0 : 1));
      }),
      (err) => {
        const usage = err instanceof UsageError ? USAGE : '';
        process.stderr.write(`${usage}${PROG}: ${usage ? 'error: ' : ''}${err.message}\n`);
        return 2;
      },
    );
}

main().then((code) => process.exit(code));
