/** Nearest-rank percentile `p` (0–100) of `xs`, in any order; 0 for no samples. */
export function percentile(xs: readonly number[], p: number): number {
  if (xs.length === 0) return 0;
  const sorted = [...xs].sort((a, b) => a - b);
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i] as number;
}

export const median = (xs: readonly number[]): number => percentile(xs, 50);
export const p99 = (xs: readonly number[]): number => percentile(xs, 99);
