// The server on the embedded tiny model (CPU backend) on a loopback port, with an official openai client: the set-up
// the server suites share. Call it in beforeAll; close() in afterAll.
import OpenAI from 'openai';
import { Harmonium } from '../../src/api.js';
import { serve, type ServerHandle } from '../../src/server/serve.js';

export interface TinyServer {
  model: Harmonium;
  server: ServerHandle;
  client: OpenAI;
  close(): Promise<void>;
}

export async function startTinyServer(): Promise<TinyServer> {
  const model = await Harmonium.load({ numBlocks: 256 });
  const server = await serve(model, { port: 0 });
  const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused', maxRetries: 0 });
  return {
    model,
    server,
    client,
    async close() {
      await server.close();
      model.close();
    },
  };
}
