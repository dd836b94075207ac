// A real OpenID provider (panva/oidc-provider) for the directory's integration tests.
//
// Usage: node provider.js <config.json>
//
// The config names one or more providers; each gets its own HTTP server on a random loopback
// port (its own issuer, signing key, clients and accounts):
//
//   { "providers": [ { "name": "a",
//       "clients": [ { "client_id", "client_secret", "redirect_uris": [..],
//                      "token_endpoint_auth_method"? } ],
//       "accounts": [ { "id", "password", "email", "email_verified"?, "name"?, "role"?,
//                       "amr"?: [..], "acr"? } ] } ] }
//
// When every server listens, one JSON line goes to stdout:
//   { "ready": true, "providers": [ { "name", "issuer", "kid", "private_pem", "rogue_pem" } ] }
// `private_pem` is the provider's own signing key (tests use it to craft tokens that only the
// claims make bad); `rogue_pem` is a key the provider never publishes.
//
// Interactions are headless: GET /interaction/:uid answers JSON describing the prompt;
// POST /interaction/:uid/login (form: login, password) logs the account in with its `amr` and
// `acr`. Consent is granted automatically (first-party clients).

import { generateKeyPairSync, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import Provider from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));

// stdout carries only the ready line; the provider's own notices go to stderr.
const stdoutWrite = process.stdout.write.bind(process.stdout);
console.log = console.error;
console.info = console.error;
console.warn = console.error;

function readForm(req) {
  return new Promise((resolve, reject) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (chunk) => { body += chunk; });
    req.on('end', () => resolve(new URLSearchParams(body)));
    req.on('error', reject);
  });
}

function sendJson(res, status, value) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(value));
}

async function start(spec) {
  const server = http.createServer();
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const issuer = `http://127.0.0.1:${server.address().port}`;

  const kid = `${spec.name}-${randomUUID()}`;
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const rogue = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
  const jwk = { ...privateKey.export({ format: 'jwk' }), kid, use: 'sig', alg: 'RS256' };

  const accounts = new Map(spec.accounts.map((a) => [a.id, a]));

  const provider = new Provider(issuer, {
    clients: spec.clients.map((c) => ({
      client_id: c.client_id,
      client_secret: c.client_secret,
      redirect_uris: c.redirect_uris,
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: c.token_endpoint_auth_method ?? 'client_secret_basic',
    })),
    jwks: { keys: [jwk] },
    cookies: { keys: [randomUUID()] },
    claims: {
      acr: null,
      amr: null,
      auth_time: null,
      sid: null,
      iss: null,
      // amr is no standalone claim in oidc-provider: the openid scope carries it.
      openid: ['sub', 'acr', 'amr', 'auth_time'],
      email: ['email', 'email_verified'],
      profile: ['name', 'pv_role'],
    },
    // Scope claims go into the ID token (the relying party reads no userinfo).
    conformIdTokenClaims: false,
    acrValues: ['urn:postvak:loa:1', 'urn:postvak:loa:2'],
    pkce: { required: () => true },
    features: { devInteractions: { enabled: false } },
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    async findAccount(ctx, id) {
      const a = accounts.get(id);
      if (!a) return undefined;
      return {
        accountId: id,
        async claims() {
          return {
            sub: id,
            email: a.email,
            email_verified: a.email_verified ?? true,
            name: a.name ?? id,
            ...(a.role !== undefined ? { pv_role: a.role } : {}),
          };
        },
      };
    },
    // First-party clients: consent is implied.
    async loadExistingGrant(ctx) {
      const grantId = ctx.oidc.result?.consent?.grantId
        || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
      if (grantId) return ctx.oidc.provider.Grant.find(grantId);
      const grant = new ctx.oidc.provider.Grant({
        clientId: ctx.oidc.client.clientId,
        accountId: ctx.oidc.session.accountId,
      });
      grant.addOIDCScope('openid email profile');
      await grant.save();
      return grant;
    },
  });
  provider.on('server_error', (ctx, err) => console.error(`[${spec.name}] server_error`, err));

  const callback = provider.callback();
  server.on('request', async (req, res) => {
    const m = req.url.match(/^\/interaction\/([^/?]+)(\/login)?/);
    if (!m) {
      callback(req, res);
      return;
    }
    try {
      const details = await provider.interactionDetails(req, res);
      if (req.method === 'GET' && !m[2]) {
        sendJson(res, 200, { uid: details.uid, prompt: details.prompt.name, params: details.params });
        return;
      }
      if (req.method === 'POST' && m[2]) {
        const form = await readForm(req);
        const account = accounts.get(form.get('login'));
        if (!account || account.password !== form.get('password')) {
          sendJson(res, 401, { error: 'bad_credentials' });
          return;
        }
        const login = { accountId: account.id };
        if (account.amr) login.amr = account.amr;
        if (account.acr) login.acr = account.acr;
        await provider.interactionFinished(req, res, { login }, { mergeWithLastSubmission: false });
        return;
      }
      sendJson(res, 405, { error: 'method_not_allowed' });
    } catch (err) {
      sendJson(res, 400, { error: err.name, error_description: err.message });
    }
  });

  return {
    name: spec.name,
    issuer,
    kid,
    private_pem: privateKey.export({ format: 'pem', type: 'pkcs8' }),
    rogue_pem: rogue.export({ format: 'pem', type: 'pkcs8' }),
  };
}

const providers = [];
for (const spec of config.providers) {
  providers.push(await start(spec));
}
stdoutWrite(`${JSON.stringify({ ready: true, providers })}\n`);

// End with the test process: stdin closes when the parent goes away.
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
