// A real OpenID Connect provider on loopback, for casa's login tests.
//
//   node provider.mjs CONFIG.json [--port N]
//
// CONFIG.json:
//   {
//     "port": 0,                       // 0 (the default): any free port
//     "client": {"client_id": "...", "client_secret": "...", "redirect_uris": ["http://..."]},
//     "users": {"alice": {"password": "...", "groups": ["physicists"], "email": "...",
//                         "name": "..."}}
//   }
//
// It listens on 127.0.0.1 only, with the issuer http://127.0.0.1:<port>, prints one line
// "READY http://127.0.0.1:<port>" once it answers, and exits with status 0 on SIGTERM or SIGINT.
// Logins go through a small HTML form at /interaction/<uid>; consent is granted at once.
import { generateKeyPairSync, randomBytes, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import process from 'node:process';

import Provider from 'oidc-provider';

function usage(message) {
  process.stderr.write(`provider.mjs: ${message}\nusage: node provider.mjs CONFIG.json [--port N]\n`);
  process.exit(2);
}

function readConfig(argv) {
  const args = argv.slice(2);
  let path;
  let port;
  for (let i = 0; i < args.length; i += 1) {
    if (args[i] === '--port') {
      port = Number(args[i + 1]);
      i += 1;
    } else if (args[i].startsWith('--port=')) {
      port = Number(args[i].slice('--port='.length));
    } else if (path === undefined) {
      path = args[i];
    } else {
      usage(`unexpected argument ${args[i]}`);
    }
  }
  if (path === undefined) usage('no configuration file given');
  let config;
  try {
    config = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    usage(`cannot read ${path}: ${err.message}`);
  }
  config.port = port ?? config.port ?? 0;
  if (!Number.isInteger(config.port) || config.port < 0 || config.port > 65535) {
    usage(`bad port ${config.port}`);
  }
  const { client } = config;
  if (!client?.client_id || !client?.client_secret || !Array.isArray(client?.redirect_uris)) {
    usage('"client" needs client_id, client_secret and redirect_uris');
  }
  if (typeof config.users !== 'object' || config.users === null) {
    usage('"users" must map usernames to {password, groups, email}');
  }
  return config;
}

function escapeHtml(value) {
  return String(value).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function samePassword(given, expected) {
  const a = Buffer.from(String(given), 'utf8');
  const b = Buffer.from(String(expected), 'utf8');
  return a.length === b.length && timingSafeEqual(a, b);
}

function page(title, body) {
  return `<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>${escapeHtml(title)}</title></head>
<body>
<h1>${escapeHtml(title)}</h1>
${body}
</body>
</html>
`;
}

function loginForm(uid, clientId, { username = '', error } = {}) {
  const message = error ? `<p class="error" role="alert">${escapeHtml(error)}</p>\n` : '';
  return page(
    'Sign in',
    `<p>to continue to ${escapeHtml(clientId)}</p>
${message}<form method="post" action="/interaction/${escapeHtml(uid)}/login" autocomplete="off">
  <input type="hidden" name="prompt" value="login">
  <label>Username <input type="text" name="username" value="${escapeHtml(username)}" required autofocus></label>
  <label>Password <input type="password" name="password" required></label>
  <button type="submit">Sign in</button>
</form>`,
  );
}

function send(res, status, html) {
  res.statusCode = status;
  res.setHeader('Content-Type', 'text/html; charset=utf-8');
  res.setHeader('Cache-Control', 'no-store');
  res.end(html);
}

async function readForm(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 64 * 1024) throw new Error('form too large');
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

function signingKey() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid: 'casa-test', use: 'sig', alg: 'RS256' };
}

function buildProvider(issuer, config) {
  const users = config.users;
  const configuration = {
    clients: [
      {
        client_id: config.client.client_id,
        client_secret: config.client.client_secret,
        redirect_uris: config.client.redirect_uris,
        grant_types: ['authorization_code'],
        response_types: ['code'],
        // The provider accepts client_secret_post for a client_secret_basic client too.
        token_endpoint_auth_method: 'client_secret_basic',
      },
    ],
    clientAuthMethods: ['client_secret_basic', 'client_secret_post'],
    responseTypes: ['code'],
    scopes: ['openid', 'profile', 'email', 'groups'],
    claims: {
      openid: ['sub'],
      profile: ['preferred_username', 'name'],
      email: ['email', 'email_verified'],
      groups: ['groups'],
    },
    // ID tokens carry the scope's claims as well, so userdata_from_id_token works too.
    conformIdTokenClaims: false,
    // A confidential client on plain-HTTP loopback, without PKCE.
    pkce: { required: () => false },
    features: {
      devInteractions: { enabled: false },
      userinfo: { enabled: true },
    },
    interactions: {
      url: (ctx, interaction) => `/interaction/${interaction.uid}`,
    },
    // Names of their own, since cookies ignore ports and the relying party is on 127.0.0.1 too.
    cookies: {
      keys: [randomBytes(32).toString('base64url')],
      names: {
        session: 'op_session',
        interaction: 'op_interaction',
        resume: 'op_interaction_resume',
      },
    },
    jwks: { keys: [signingKey()] },
    ttl: {
      AccessToken: 3600,
      AuthorizationCode: 600,
      IdToken: 3600,
      Interaction: 3600,
      Session: 86400,
      Grant: 86400,
    },
    async findAccount(ctx, sub) {
      if (!Object.hasOwn(users, sub)) return undefined;
      const user = users[sub];
      return {
        accountId: sub,
        async claims() {
          const email = user.email ?? `${sub}@example.org`;
          return {
            sub,
            preferred_username: sub,
            name: user.name ?? sub,
            email,
            email_verified: true,
            groups: [...(user.groups ?? [])],
          };
        },
      };
    },
    async renderError(ctx, out) {
      ctx.type = 'html';
      const rows = Object.entries(out)
        .map(([key, value]) => `<p><strong>${escapeHtml(key)}</strong>: ${escapeHtml(value)}</p>`)
        .join('\n');
      ctx.body = page('Error', rows);
    },
  };
  return new Provider(issuer, configuration);
}

async function grantConsent(provider, details) {
  const { prompt, params, session, grantId } = details;
  const grant = grantId
    ? await provider.Grant.find(grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  const missing = prompt.details;
  if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
  if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
  if (missing.missingResourceScopes) {
    for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes)) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
  }
  return grant.save();
}

// GET /interaction/<uid>: the login form, or consent granted at once.
// POST /interaction/<uid>/login: check the password, then finish the login.
async function interaction(provider, config, req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) {
    send(res, 400, page('Error', '<p>This sign-in request has ended; start again.</p>'));
    return;
  }
  const clientId = details.params.client_id;
  const promptName = details.prompt.name;

  if (req.method === 'GET' && action === undefined) {
    if (promptName === 'login') {
      send(res, 200, loginForm(uid, clientId));
    } else if (promptName === 'consent') {
      const grantId = await grantConsent(provider, details);
      await provider.interactionFinished(
        req,
        res,
        { consent: { grantId } },
        {
          mergeWithLastSubmission: true,
        },
      );
    } else {
      send(res, 501, page('Error', `<p>prompt ${escapeHtml(promptName)} is not supported</p>`));
    }
    return;
  }

  if (req.method === 'POST' && action === 'login') {
    if (promptName !== 'login') {
      send(res, 400, page('Error', '<p>No sign-in is pending for this request.</p>'));
      return;
    }
    const form = await readForm(req);
    const username = form.get('username') ?? '';
    const password = form.get('password') ?? '';
    const user = Object.hasOwn(config.users, username) ? config.users[username] : undefined;
    if (!user || !samePassword(password, user.password)) {
      send(res, 401, loginForm(uid, clientId, { username, error: 'Invalid username or password.' }));
      return;
    }
    await provider.interactionFinished(
      req,
      res,
      { login: { accountId: username } },
      {
        mergeWithLastSubmission: false,
      },
    );
    return;
  }

  send(res, 405, page('Error', '<p>method not allowed</p>'));
}

async function main() {
  const config = readConfig(process.argv);
  let handler = (req, res) => send(res, 503, page('Error', '<p>starting</p>'));
  const server = createServer((req, res) => handler(req, res));
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(config.port, '127.0.0.1', resolve);
  });
  const issuer = `http://127.0.0.1:${server.address().port}`;
  const provider = buildProvider(issuer, config);
  provider.on('server_error', (ctx, err) => {
    process.stderr.write(`provider.mjs: server error: ${err.stack ?? err}\n`);
  });
  const oidc = provider.callback();
  const route = /^\/interaction\/([A-Za-z0-9_-]+)(?:\/(login))?\/?$/;

  handler = (req, res) => {
    const { pathname } = new URL(req.url, issuer);
    const match = route.exec(pathname);
    if (!match) {
      oidc(req, res);
      return;
    }
    interaction(provider, config, req, res, match[1], match[2]).catch((err) => {
      const known = err?.name === 'SessionNotFound' || err?.statusCode === 400;
      if (!known) process.stderr.write(`provider.mjs: interaction error: ${err.stack ?? err}\n`);
      if (!res.headersSent) {
        send(res, known ? 400 : 500, page('Error', `<p>${escapeHtml(err.message ?? err)}</p>`));
      } else {
        res.end();
      }
    });
  };

  const stop = () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);

  process.stdout.write(`READY ${issuer}\n`);
}

main().catch((err) => {
  process.stderr.write(`provider.mjs: ${err.stack ?? err}\n`);
  process.exit(1);
});
