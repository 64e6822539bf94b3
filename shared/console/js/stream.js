// Live updates of one deployment: its status and steps, and its log entries in order.
//
// First choice: the server-sent events stream `S/deployments/{id}/stream`, read with fetch()
// and a stream reader, because EventSource cannot send the Authorization header. Where it is
// not available (404, e.g. behind API Gateway, or no first event within 3 s), poll
// `logs?continuationToken=` and the deployment every second instead.

import { api, ApiError } from './api.js';

const FIRST_EVENT_TIMEOUT_MS = 3000;
const POLL_MS = 1000;

/**
 * Parses a text/event-stream body incrementally. Feed it chunks of text; it calls
 * `onEvent({ event, data, id })` per complete event.
 */
export function sseParser(onEvent) {
  let buffer = '';
  let event = 'message';
  let data = [];
  let id = null;
  return (chunk) => {
    buffer += chunk;
    let nl;
    while ((nl = buffer.search(/\r\n|\r|\n/)) >= 0) {
      const line = buffer.slice(0, nl);
      buffer = buffer.slice(nl + (buffer.startsWith('\r\n', nl) ? 2 : 1));
      if (line === '') {
        if (data.length) onEvent({ event, data: data.join('\n'), id });
        event = 'message';
        data = [];
        continue;
      }
      if (line.startsWith(':')) continue; // comment / keep-alive
      const colon = line.indexOf(':');
      const name = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? '' : line.slice(colon + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (name === 'event') event = value;
      else if (name === 'data') data.push(value);
      else if (name === 'id') id = value;
    }
  };
}

/**
 * Follows a deployment until it ends and every log line was delivered.
 * Callbacks: onDeployment(d), onLog({ seq, step, header?, line?, timestamp }), onEnd(),
 * onMode('stream' | 'polling'), onError(err) (a transient problem; it keeps trying).
 * Returns { stop() }.
 */
export function follow(stackPath, id, handlers) {
  const { onDeployment = () => {}, onLog = () => {}, onEnd = () => {}, onMode = () => {}, onError = () => {} } = handlers;
  const base = `${stackPath}/deployments/${encodeURIComponent(id)}`;
  let stopped = false;
  let lastSeq = 0; // the last log entry delivered, by the stream's seq
  let step = -1; // step index of the last header (polling mode has no `step` field)
  let controller = null;
  let timer = null;

  const stop = () => {
    stopped = true;
    if (controller) controller.abort();
    clearTimeout(timer);
  };

  const deliver = (entry) => {
    if (entry.header !== undefined && entry.header !== null) step = entry.step ?? step + 1;
    else if (entry.step !== undefined && entry.step !== null) step = entry.step;
    onLog({ ...entry, step: Math.max(step, 0) });
  };

  // ---- SSE over fetch ----
  async function stream(attempt) {
    controller = new AbortController();
    let gotEvent = false;
    let ended = false;
    const firstEventTimer = setTimeout(() => {
      if (!gotEvent) controller.abort('timeout');
    }, FIRST_EVENT_TIMEOUT_MS);
    try {
      const res = await api(`${base}/stream${lastSeq ? `?after=${lastSeq}` : ''}`, {
        raw: true,
        signal: controller.signal,
        headers: { Accept: 'text/event-stream' },
      });
      const type = res.headers.get('content-type') || '';
      if (!type.includes('text/event-stream')) throw new ApiError(404, 'no event stream here');
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      const parse = sseParser(({ event, data }) => {
        gotEvent = true;
        clearTimeout(firstEventTimer);
        if (stopped) return;
        let body = {};
        try {
          body = data ? JSON.parse(data) : {};
        } catch {
          return;
        }
        if (event === 'deployment') onDeployment(body);
        else if (event === 'log') {
          if (typeof body.seq === 'number' && body.seq <= lastSeq) return; // resent after a reconnect
          if (typeof body.seq === 'number') lastSeq = body.seq;
          deliver(body);
        } else if (event === 'end') ended = true;
      });
      onMode('stream');
      for (;;) {
        const { value, done } = await reader.read();
        if (done || stopped) break;
        parse(value);
        if (ended) break;
      }
      if (ended) {
        controller.abort();
        if (!stopped) onEnd();
        return;
      }
      // The connection dropped before `end`: resume where it stopped.
      if (!stopped) reconnect(attempt + 1);
    } catch (err) {
      if (stopped) return;
      const unavailable = (err instanceof ApiError && (err.status === 404 || err.status === 405 || err.status === 501))
        || (!gotEvent && (controller.signal.reason === 'timeout' || err === 'timeout'));
      if (err instanceof ApiError && err.status === 401) return; // the app signs out
      if (unavailable && attempt === 0) {
        poll();
        return;
      }
      reconnect(attempt + 1, err);
    } finally {
      clearTimeout(firstEventTimer);
    }
  }

  function reconnect(attempt, err) {
    if (attempt > 5) {
      // The stream keeps failing: polling reads the same entries with the same sequence.
      poll();
      return;
    }
    if (err) onError(err);
    timer = setTimeout(() => stream(attempt), Math.min(500 * 2 ** attempt, 5000));
  }

  // ---- Polling ----
  async function poll() {
    onMode('polling');
    // Tarmac's continuation token is the last sequence read, so polling picks up where the
    // stream left off.
    let token = lastSeq ? String(lastSeq) : '';
    let lastStateKey = '';
    const tick = async () => {
      if (stopped) return;
      try {
        const deployment = await api(base);
        const key = stateKey(deployment);
        if (key !== lastStateKey) {
          lastStateKey = key;
          onDeployment(deployment);
        }
        // Read every page that is ready now.
        for (;;) {
          const page = await api(`${base}/logs${token ? `?continuationToken=${encodeURIComponent(token)}` : ''}`);
          if (stopped) return;
          for (const entry of page.lines || []) deliver(entry);
          if (!page.nextToken) {
            // The status may have turned terminal after this tick read it: read it once more.
            const final = await api(base);
            if (stateKey(final) !== lastStateKey) onDeployment(final);
            if (!stopped) onEnd();
            return;
          }
          const more = page.nextToken !== token && (page.lines || []).length > 0;
          token = page.nextToken;
          if (!more) break;
        }
      } catch (err) {
        if (stopped) return;
        if (err instanceof ApiError && err.status === 401) return;
        onError(err);
      }
      // The log is finished only with no nextToken; a terminal status alone is not the end.
      timer = setTimeout(tick, POLL_MS);
    };
    tick();
  }

  stream(0);
  return { stop };
}

/** What in a deployment changes its rendering: status and step statuses. */
function stateKey(d) {
  const job = (d.jobs && d.jobs[0]) || { steps: [] };
  return JSON.stringify([d.status, job.status, job.lastUpdated, (job.steps || []).map((s) => [s.status, s.lastUpdated])]);
}

