// Order statistics over logit rows. The canonical order of tokens everywhere in sampling is: value descending,
// then token id ascending (the native narrowing uses the same order), so "the k best" is always well defined.

/** Sorts ids (in place) by values[id] descending, ties by lower id. */
export function sortCanonical(ids: number[], value: (id: number) => number): number[] {
  return ids.sort((x, y) => {
    const d = value(y) - value(x);
    return d !== 0 && !Number.isNaN(d) ? d : x - y;
  });
}

/** The index of the best entry of a row (lowest id among equal maxima). */
export function argmaxRow(values: ArrayLike<number>): number {
  let best = 0;
  let bv = values[0];
  for (let i = 1; i < values.length; i++) {
    const v = values[i];
    if (v > bv) {
      bv = v;
      best = i;
    }
  }
  return best;
}

/**
 * The value of the k-th largest entry (1-based) of xs, reordering xs. Hoare quickselect with a
 * median-of-three pivot: linear on average, and a row of 201,088 logits takes about a millisecond.
 */
export function kthLargest(xs: Float64Array, k: number): number {
  let lo = 0;
  let hi = xs.length - 1;
  const target = k - 1; // index in descending order
  while (hi > lo) {
    const mid = (lo + hi) >>> 1;
    const a = xs[lo];
    const b = xs[mid];
    const c = xs[hi];
    const pivot = a > b ? (b > c ? b : a > c ? c : a) : a > c ? a : b > c ? c : b;
    let i = lo;
    let j = hi;
    while (i <= j) {
      while (xs[i] > pivot) i++;
      while (xs[j] < pivot) j--;
      if (i <= j) {
        const t = xs[i];
        xs[i] = xs[j];
        xs[j] = t;
        i++;
        j--;
      }
    }
    if (target <= j) hi = j;
    else if (target >= i) lo = i;
    else return xs[target];
  }
  return xs[lo];
}

/**
 * The k best ids among those passing `keep`, in canonical order. Quickselect finds the k-th value; ties at that
 * value go to the lower ids, as the canonical order says.
 */
export function topKCanonical(values: Float64Array, k: number, keep: (i: number) => boolean): number[] {
  const n = values.length;
  let count = 0;
  for (let i = 0; i < n; i++) if (keep(i)) count++;
  const ids: number[] = [];
  if (count <= k) {
    for (let i = 0; i < n; i++) if (keep(i)) ids.push(i);
    return sortCanonical(ids, (i) => values[i]);
  }
  const pool = new Float64Array(count);
  let p = 0;
  for (let i = 0; i < n; i++) if (keep(i)) pool[p++] = values[i];
  const kth = kthLargest(pool, k);
  for (let i = 0; i < n; i++) if (keep(i) && values[i] > kth) ids.push(i);
  for (let i = 0; i < n && ids.length < k; i++) if (keep(i) && values[i] === kth) ids.push(i);
  return sortCanonical(ids, (i) => values[i]);
}
