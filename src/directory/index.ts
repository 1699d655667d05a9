export {
  Directory,
  type DirectoryEventMap,
  DirectoryEvents,
  type DirectoryLogger,
  type DirectoryOptions,
  type InstanceInfo,
  type SessionInfo,
} from './directory.js';
export { DirectoryMetrics, type DirectoryMetricsOptions } from './metrics.js';
export {
  DEFAULT_MAX_EVENT_BYTES,
  type DirectoryStreamEvent,
  parseSse,
  type ReadEventsOptions,
  readEvents,
  type SseMessage,
} from './sse.js';
