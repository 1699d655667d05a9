// The directory's JSON API, with relative URLs, so the dashboard works wherever the directory is
// mounted. With an operator token, requests carry `Authorization: Bearer`; the event stream
// (EventSource cannot send headers) carries it as `?token=`, which the directory accepts on
// `/api/events` only.

const KEY = 'roam.dashboard.token';
/** The token when sessionStorage is unavailable. */
let memory = '';

export const token = {
  get() {
    try {
      return sessionStorage.getItem(KEY) ?? '';
    } catch {
      return '';
    }
  },
  set(t) {
    try {
      if (t) sessionStorage.setItem(KEY, t);
      else sessionStorage.removeItem(KEY);
    } catch {
      // Storage disabled: the token lasts until the page reloads.
    }
    memory = t;
  },
};
const current = () => token.get() || memory;

/** A refused or failed API call: the directory's error code and message. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** GET `path`, or POST `body` as JSON; resolves with the parsed reply or throws {@link ApiError}. */
export async function api(path, body) {
  const headers = { accept: 'application/json' };
  const t = current();
  if (t) headers.authorization = `Bearer ${t}`;
  const init = { headers, cache: 'no-store' };
  if (body !== undefined) {
    init.method = 'POST';
    headers['content-type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (err) {
    throw new ApiError(0, 'UNAVAILABLE', `directory unreachable: ${err.message}`);
  }
  let data = null;
  try {
    data = await res.json();
  } catch {
    // not JSON: judged by the status below
  }
  if (!res.ok) {
    const e = data?.error;
    throw new ApiError(res.status, e?.code ?? `HTTP_${res.status}`, e?.message ?? res.statusText);
  }
  return data;
}

/** URL of the live event stream, with the token if there is one. */
export function eventsUrl() {
  const t = current();
  return t ? `api/events?token=${encodeURIComponent(t)}` : 'api/events';
}
