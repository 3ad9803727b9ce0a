# The partner server against an external PostgreSQL (DATABASE_URL). The embedded database is
# for laptops and tests; in a container the database is a service of its own.
FROM node:20-bookworm-slim
WORKDIR /app
ENV NODE_ENV=production
COPY package.json package-lock.json .npmrc prisma.config.ts ./
COPY prisma ./prisma
RUN npm ci --no-audit --no-fund
COPY . .
USER node
EXPOSE 8080
CMD ["node", "--import", "tsx", "src/main.ts"]
