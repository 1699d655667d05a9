/**
 * Bounds one step of a scenario: the step's own promise settles it, and if it has not after `ms`
 * the test fails naming the step and what `detail` says about the state then, instead of hanging
 * until the suite's timeout cancels it without saying where it stood.
 */
export async function within<T>(what: string, ms: number, p: Promise<T>, detail?: () => string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      reject(new Error(`${what}: not done after ${ms} ms${detail ? ` (${detail()})` : ''}`));
    }, ms);
  });
  try {
    return await Promise.race([p, late]);
  } finally {
    clearTimeout(timer);
  }
}
