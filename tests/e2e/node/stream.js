#!/usr/bin/env node
// Streams one Generate from an m40llm server with @grpc/grpc-js, the .proto
// loaded at run time by @grpc/proto-loader, and checks the stream: the
// token_ids of all messages add up to max_tokens, only the last message has
// a finish reason (LENGTH) with usage and timings, and every message echoes
// the request id. Prints one JSON line with what it received; exits 0 when
// every check passed, 1 otherwise.
//
// usage: node stream.js --addr 127.0.0.1:50051 --proto-root proto \
//            [--max-tokens 40] [--seed 7] [--prompt TEXT] [--timeout 30]
'use strict';

const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

function parseArgs(argv) {
  const args = {
    addr: '127.0.0.1:50051',
    protoRoot: path.join(__dirname, '..', '..', '..', 'proto'),
    maxTokens: 40,
    seed: 7,
    prompt: 'Once upon a time',
    timeout: 30,
  };
  for (let i = 2; i < argv.length; i += 2) {
    const [flag, value] = [argv[i], argv[i + 1]];
    if (value === undefined) throw new Error(`${flag} needs a value`);
    switch (flag) {
      case '--addr': args.addr = value; break;
      case '--proto-root': args.protoRoot = value; break;
      case '--max-tokens': args.maxTokens = Number(value); break;
      case '--seed': args.seed = value; break;
      case '--prompt': args.prompt = value; break;
      case '--timeout': args.timeout = Number(value); break;
      default: throw new Error(`unknown flag ${flag}`);
    }
  }
  return args;
}

function main() {
  const args = parseArgs(process.argv);
  const def = protoLoader.loadSync('m40llm/v1/m40llm.proto', {
    includeDirs: [args.protoRoot],
    keepCase: true,   // field names as in the .proto (token_ids, finish_reason)
    longs: String,    // uint64 seed as a decimal string
    enums: String,    // FINISH_REASON_LENGTH
    defaults: true,
    oneofs: true,
  });
  const v1 = grpc.loadPackageDefinition(def).m40llm.v1;
  const client = new v1.Inference(args.addr, grpc.credentials.createInsecure());
  const requestId = `node-${process.pid}`;
  const request = {
    text: args.prompt,
    max_tokens: args.maxTokens,
    ignore_eos: true,
    seed: String(args.seed),
    temperature: 0.8,
    request_id: requestId,
  };
  const deadline = new Date(Date.now() + args.timeout * 1000);
  const messages = [];
  const call = client.Generate(request, {deadline});
  const failures = [];
  const check = (ok, what) => { if (!ok) failures.push(what); };
  let finished = false;  // 'error' and 'end' each end the call; report once

  call.on('data', (m) => messages.push(m));
  call.on('error', (err) => {
    if (finished) return;
    finished = true;
    console.log(JSON.stringify({ok: false, code: err.code, details: err.details}));
    client.close();
    process.exitCode = 1;
  });
  call.on('end', () => {
    if (finished) return;
    finished = true;
    client.close();
    const tokens = messages.flatMap((m) => m.token_ids);
    const last = messages[messages.length - 1];
    check(messages.length > 0, 'no messages');
    check(tokens.length === args.maxTokens,
          `received ${tokens.length} tokens, asked for ${args.maxTokens}`);
    check(messages.every((m) => m.request_id === requestId), 'request_id not echoed');
    check(messages.slice(0, -1).every((m) => m.finish_reason === 'FINISH_REASON_UNSPECIFIED'),
          'finish_reason before the last message');
    if (last) {
      check(last.finish_reason === 'FINISH_REASON_LENGTH',
            `finish_reason ${last.finish_reason}, want FINISH_REASON_LENGTH`);
      check(last.usage && last.usage.completion_tokens === args.maxTokens,
            `usage ${JSON.stringify(last.usage)}`);
      check(last.timings && last.timings.time_to_first_token_seconds > 0,
            `timings ${JSON.stringify(last.timings)}`);
      check(last.seed === String(args.seed), `seed ${last.seed}, want ${args.seed}`);
    }
    console.log(JSON.stringify({
      ok: failures.length === 0,
      failures,
      messages: messages.length,
      tokens,
      text: messages.map((m) => m.text).join(''),
      finish_reason: last ? last.finish_reason : null,
      usage: last ? last.usage : null,
    }));
    process.exitCode = failures.length === 0 ? 0 : 1;
  });
}

try {
  main();
} catch (err) {
  console.log(JSON.stringify({ok: false, error: String(err)}));
  process.exitCode = 1;
}
