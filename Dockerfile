# The partner server against an external PostgreSQL (DATABASE_URL). The embedded database is
# for laptops and tests; in a container the database is a service of its own.
FROM node:24-bookworm-slim
WORKDIR /app
COPY package.json package-lock.json .npmrc prisma.config.ts ./
COPY prisma ./prisma
RUN npm ci --no-audit --no-fund
COPY . .
# Compiled JavaScript (about 40 MB less memory than running TypeScript through tsx), then the
# build tools go.
RUN npm run build && npm prune --omit=dev
ENV NODE_ENV=production
USER node
EXPOSE 8080
CMD ["node", "--enable-source-maps", "dist/main.js"]
