// Asks DatoCMS's official Node client to generate a subtitles track, against the
// base URL in DATOCMS_BASE_URL, and prints the outcome as one JSON line:
//   {"ok": true, "track": {...}}                       the client's deserialized track
//   {"ok": false, "status": 422, "errors": [...]}      an ApiError the client raised
// Exit code: 0 for either of those, 1 for anything unexpected.
import { ApiError, buildClient } from '@datocms/cma-client-node';

function required(name) {
  const value = process.env[name];
  if (!value) {
    throw new Error(`environment variable ${name} is required`);
  }
  return value;
}

const client = buildClient({
  apiToken: required('DATOCMS_API_TOKEN'),
  baseUrl: required('DATOCMS_BASE_URL'),
  environment: process.env.DATOCMS_ENVIRONMENT || undefined,
});

try {
  const track = await client.uploadTracks.generateSubtitles(required('UPLOAD_ID'), {
    language_code: process.env.LANGUAGE_CODE || 'it-IT',
    name: process.env.TRACK_NAME || 'Italiano',
  });
  console.log(JSON.stringify({ ok: true, track }));
} catch (error) {
  if (!(error instanceof ApiError)) {
    throw error;
  }
  console.log(JSON.stringify({ ok: false, status: error.response.status, errors: error.errors }));
}
