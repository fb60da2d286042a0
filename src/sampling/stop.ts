// Stop strings over streamed text: text is released only once it can no longer be the start of a stop string,
// so a stop string split across tokens is still caught and never shown (OpenAI: the stop text is not returned).

export class StopStrings {
  private readonly stops: string[];
  private held = '';
  stopped = false;

  constructor(stops: string[]) {
    this.stops = stops;
  }

  /** Feeds a text delta; returns what may be shown now. After a match, returns the text before it and stops. */
  push(delta: string): string {
    if (this.stopped) return '';
    if (this.stops.length === 0) return delta;
    const text = this.held + delta;
    let cut = -1;
    for (const s of this.stops) {
      const at = text.indexOf(s);
      if (at >= 0 && (cut < 0 || at < cut)) cut = at;
    }
    if (cut >= 0) {
      this.stopped = true;
      this.held = '';
      return text.slice(0, cut);
    }
    // Hold back the longest tail that is a proper prefix of some stop string.
    let hold = 0;
    for (const s of this.stops)
      for (let n = Math.min(s.length - 1, text.length); n > hold; n--)
        if (text.endsWith(s.slice(0, n))) {
          hold = n;
          break;
        }
    this.held = text.slice(text.length - hold);
    return text.slice(0, text.length - hold);
  }

  /** The text still held back when the output ends for another reason. */
  flush(): string {
    const h = this.held;
    this.held = '';
    return this.stopped ? '' : h;
  }
}
