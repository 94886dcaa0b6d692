// A real OpenID Connect issuer on loopback for msapp's role tests (the npm `oidc-provider` package), shaped
// like a Keycloak realm, which is what MONAI Label's auth expects:
//   GET  <realm>                                     {"realm", "public_key": <base64 SPKI DER of the signing key>}
//   GET  <realm>/.well-known/openid-configuration    discovery (oidc-provider)
//   POST <realm>/token                               grant_type=password (what MONAI Label's /auth/token sends) or
//                                                    client_credentials; answers an RS256 JWT access token with
//                                                    preferred_username, email, name and realm_access.roles
// Users and their roles come from the MSAPP_OIDC_USERS environment variable (JSON:
// {"name": {"password": "...", "roles": ["monailabel-user", ...]}}). The signing key is generated at start and
// never written anywhere. Prints one JSON line {"issuer", "realm", "token_endpoint"} when it is ready.
//
//   node scripts/oidc/issuer.js [--port 0]

import crypto from 'node:crypto';
import http from 'node:http';

import Provider, { errors } from 'oidc-provider';

const REALM_PATH = '/realms/msapp';
const RESOURCE = 'urn:msapp:monailabel';
const CLIENT_ID = process.env.MSAPP_OIDC_CLIENT_ID || 'monailabel-app';
const TOKEN_TTL = Number(process.env.MSAPP_OIDC_TOKEN_TTL || 300);
const portArg = process.argv.indexOf('--port');
const port = portArg > 0 ? Number(process.argv[portArg + 1]) : 0;
const users = JSON.parse(process.env.MSAPP_OIDC_USERS || '{}');

const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: 'msapp-test-key', use: 'sig', alg: 'RS256' };
const publicKey = crypto.createPublicKey(privateKey).export({ type: 'spki', format: 'der' }).toString('base64');

function claimsOf(username) {
  const user = users[username];
  if (!user) return {};
  return {
    preferred_username: username,
    email: user.email || `${username}@example.org`,
    name: user.name || username,
    realm_access: { roles: user.roles || [] },
  };
}

function sameSecret(a, b) {
  const left = Buffer.from(String(a));
  const right = Buffer.from(String(b));
  return left.length === right.length && crypto.timingSafeEqual(left, right);
}

const server = http.createServer();
await new Promise((resolve) => { server.listen(port, '127.0.0.1', resolve); });
const issuer = `http://127.0.0.1:${server.address().port}${REALM_PATH}`;

const resourceServer = {
  scope: 'openid profile email',
  audience: CLIENT_ID,
  accessTokenFormat: 'jwt',
  accessTokenTTL: TOKEN_TTL,
  jwt: { sign: { alg: 'RS256' } },
};

const provider = new Provider(issuer, {
  clients: [{
    client_id: CLIENT_ID,
    token_endpoint_auth_method: 'none', // a public client, as Slicer's login through MONAI Label is
    grant_types: ['password'],
    response_types: [],
    redirect_uris: [],
  }, ...Object.entries(users).map(([name, user]) => ({
    // each user can also be a confidential client (client_credentials), for tools that have no password flow
    client_id: `${name}-cli`,
    client_secret: user.password,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
  }))],
  jwks: { keys: [signingKey] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: false },
    revocation: { enabled: false },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => RESOURCE,
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, indicator) => {
        if (indicator !== RESOURCE) throw new errors.InvalidTarget();
        return resourceServer;
      },
    },
  },
  extraTokenClaims: (ctx, token) => {
    const username = token.accountId || (token.clientId || '').replace(/-cli$/, '');
    return claimsOf(username);
  },
  ttl: { AccessToken: TOKEN_TTL, ClientCredentials: TOKEN_TTL },
});

// Resource Owner Password Credentials: removed from OAuth 2.1 and not built into oidc-provider, but it is what
// MONAI Label's POST /auth/token forwards (as it does to Keycloak). Test issuer only.
provider.registerGrantType('password', async (ctx) => {
  const { username, password } = ctx.oidc.params;
  const user = users[username];
  if (!user || !sameSecret(user.password, password)) {
    throw new errors.InvalidGrant('invalid username or password');
  }
  const token = new provider.AccessToken({
    accountId: username,
    client: ctx.oidc.client,
    gty: 'password',
    scope: 'openid profile email',
  });
  token.resourceServer = new provider.ResourceServer(RESOURCE, resourceServer);
  ctx.oidc.entity('AccessToken', token);
  const value = await token.save();
  ctx.body = {
    access_token: value,
    expires_in: token.expiration,
    token_type: 'Bearer',
    scope: token.scope,
  };
}, ['username', 'password', 'scope']);

const oidc = provider.callback();
server.on('request', (req, res) => {
  const path = req.url.split('?')[0];
  if (req.method === 'GET' && (path === REALM_PATH || path === `${REALM_PATH}/`)) {
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({
      realm: 'msapp',
      public_key: publicKey,
      'token-service': `${issuer}/protocol/openid-connect`,
      'account-service': `${issuer}/account`,
    }));
    return;
  }
  if (path.startsWith(REALM_PATH)) {
    req.originalUrl = req.url; // oidc-provider derives its mount path (and endpoint URLs) from this, as under Express
    req.url = req.url.slice(REALM_PATH.length) || '/';
    oidc(req, res);
    return;
  }
  res.statusCode = 404;
  res.end();
});

process.stdout.write(`${JSON.stringify({ issuer, realm: issuer, token_endpoint: `${issuer}/token` })}\n`);
for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => server.close(() => process.exit(0)));
