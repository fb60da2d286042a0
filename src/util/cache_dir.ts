// Where harmonium keeps files it generates (the embedded tiny model): HARMONIUM_CACHE when set, else the
// platform's per-user cache directory. Never inside the package, which may be read-only once installed.
import { homedir } from 'node:os';
import { join } from 'node:path';

export function cacheDir(env: NodeJS.ProcessEnv = process.env, platform: NodeJS.Platform = process.platform): string {
  if (env.HARMONIUM_CACHE) return env.HARMONIUM_CACHE;
  if (platform === 'win32') return join(env.LOCALAPPDATA ?? join(homedir(), 'AppData', 'Local'), 'harmonium', 'Cache');
  if (platform === 'darwin') return join(homedir(), 'Library', 'Caches', 'harmonium');
  return join(env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'harmonium');
}
