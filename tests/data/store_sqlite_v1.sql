-- A cloud store as the SQLite code before the store package made it (schema without a
-- version table), with a few rows; the migration test builds a database from it.
BEGIN TRANSACTION;
CREATE TABLE "alerts" (
   "id" INTEGER PRIMARY KEY,
   "gateway" TEXT,
   "asset" TEXT,
   "seq" INTEGER,
   "source" TEXT,
   "old_state" TEXT,
   "new_state" TEXT,
   "probability" REAL,
   "rul" REAL,
   "model_version" TEXT,
   "tick_time" REAL,
   "published_at" REAL
);
INSERT INTO "alerts" VALUES(1,'gw1','a1',5,'cloud','NORMAL','WARNING',0.9,20.0,'cloud-1',1800000005.0,1800000021.0);
CREATE TABLE "assets" (
   "gateway" TEXT,
   "asset" TEXT,
   "first_seen" REAL,
   "last_seen" REAL,
   "last_seq" INTEGER,
   "ticks" INTEGER NOT NULL DEFAULT 0,
   "edge_seq" INTEGER,
   "edge_probability" REAL,
   "edge_rul" REAL,
   "edge_model_version" TEXT,
   "cloud_seq" INTEGER,
   "cloud_probability" REAL,
   "cloud_rul" REAL,
   "cloud_state" TEXT,
   "cloud_state_since" REAL,
   "cloud_model_version" TEXT,
   "scored_at" REAL,
   PRIMARY KEY ("gateway", "asset")
);
INSERT INTO "assets" VALUES('gw1','a1',1800000010.0,1800000010.0,7,8,7,0.25,40.0,'edge-1',7,0.9,20.0,'WARNING',1800000021.0,'cloud-1',1800000022.0);
CREATE TABLE "dead_letters" (
   "id" INTEGER PRIMARY KEY,
   "received_at" REAL,
   "topic" TEXT,
   "gateway" TEXT,
   "reason" TEXT,
   "detail" TEXT,
   "size" INTEGER,
   "payload" BLOB
);
INSERT INTO "dead_letters" VALUES(1,1800000003.0,'pdm/v1/gw1/uplink','gw1','invalid','bad payload',2,X'0001');
CREATE TABLE "feature_sets" (
   "id" INTEGER PRIMARY KEY,
   "names" TEXT NOT NULL
);
INSERT INTO "feature_sets" VALUES(1,'["s1", "s2", "s3"]');
CREATE TABLE "gateways" (
   "gateway" TEXT PRIMARY KEY,
   "online" INTEGER,
   "status_time" REAL,
   "first_seen" REAL,
   "last_seen" REAL,
   "model_version" TEXT,
   "agent_version" TEXT
);
INSERT INTO "gateways" VALUES('gw1',1,1800000001.0,1800000010.0,1800000010.0,'edge-1',NULL);
CREATE TABLE "health" (
   "id" INTEGER PRIMARY KEY,
   "checked_at" REAL
);
CREATE TABLE "models" (
   "version" TEXT PRIMARY KEY,
   "created" TEXT,
   "registered_at" REAL,
   "source" TEXT,
   "sha256" TEXT,
   "size" INTEGER,
   "signature" TEXT,
   "path" TEXT,
   "tar_path" TEXT,
   "window" INTEGER,
   "features" TEXT,
   "manifest" TEXT
);
INSERT INTO "models" VALUES('m-1','2026-11-01T00:00:00Z',1800000000.0,'config','abababababababababababababababababababababababababababababababab',10,'sig','/x','/x.tar',5,'["s1","s2","s3"]','{}');
CREATE TABLE "predictions" (
   "gateway" TEXT,
   "asset" TEXT,
   "seq" INTEGER,
   "tick_time" REAL,
   "probability" REAL,
   "rul" REAL,
   "edge_probability" REAL,
   "edge_rul" REAL,
   "diff" REAL,
   "rul_diff" REAL,
   "model_version" TEXT,
   "edge_model_version" TEXT,
   "scored_at" REAL,
   "error" TEXT,
   PRIMARY KEY ("gateway", "asset", "seq")
);
INSERT INTO "predictions" VALUES('gw1','a1',4,1800000004.0,0.9,20.0,0.25,40.0,0.65,20.0,'cloud-1','edge-1',1800000020.0,NULL);
INSERT INTO "predictions" VALUES('gw1','a1',5,1800000005.0,0.9,20.0,0.25,40.0,0.65,20.0,'cloud-1','edge-1',1800000020.0,NULL);
INSERT INTO "predictions" VALUES('gw1','a1',6,1800000006.0,0.9,20.0,0.25,40.0,0.65,20.0,'cloud-1','edge-1',1800000020.0,NULL);
INSERT INTO "predictions" VALUES('gw1','a1',7,1800000007.0,0.9,20.0,0.25,40.0,0.65,20.0,'cloud-1','edge-1',1800000020.0,NULL);
CREATE TABLE "rollout_targets" (
   "rollout_id" TEXT REFERENCES "rollouts"("id"),
   "gateway" TEXT,
   "from_version" TEXT,
   "step" TEXT,
   "reason" TEXT,
   "updated_at" REAL,
   "report_time" REAL,
   PRIMARY KEY ("rollout_id", "gateway")
);
INSERT INTO "rollout_targets" VALUES('r1','gw1','edge-1','announced',NULL,1800000030.0,NULL);
CREATE TABLE "rollouts" (
   "id" TEXT PRIMARY KEY,
   "version" TEXT,
   "action" TEXT,
   "state" TEXT,
   "created_at" REAL,
   "updated_at" REAL,
   "percent" REAL,
   "requested" TEXT
);
INSERT INTO "rollouts" VALUES('r1','m-1','install','active',1800000030.0,1800000030.0,NULL,'{"gateways": null}');
CREATE TABLE "shadow_scores" (
   "gateway" TEXT,
   "asset" TEXT,
   "seq" INTEGER,
   "model_version" TEXT,
   "probability" REAL,
   "rul" REAL,
   PRIMARY KEY ("gateway", "asset", "seq", "model_version")
);
CREATE TABLE "ticks" (
   "gateway" TEXT,
   "asset" TEXT,
   "seq" INTEGER,
   "time" REAL NOT NULL,
   "feature_set" INTEGER NOT NULL,
   "vals" BLOB NOT NULL,
   "edge_probability" REAL,
   "edge_rul" REAL,
   "model_version" TEXT,
   "received_at" REAL,
   PRIMARY KEY ("gateway", "asset", "seq")
);
INSERT INTO "ticks" VALUES('gw1','a1',0,1800000000.0,1,X'000000000000803F00000040',0.25,40.0,'edge-1',1800000010.0);
INSERT INTO "ticks" VALUES('gw1','a1',1,1800000001.0,1,X'00004040000080400000A040',0.25,40.0,'edge-1',1800000010.0);
INSERT INTO "ticks" VALUES('gw1','a1',2,1800000002.0,1,X'0000C0400000E04000000041',0.25,40.0,'edge-1',1800000010.0);
INSERT INTO "ticks" VALUES('gw1','a1',3,1800000003.0,1,X'000010410000204100003041',0.25,40.0,'edge-1',1800000010.0);
INSERT INTO "ticks" VALUES('gw1','a1',4,1800000004.0,1,X'000040410000504100006041',0.25,40.0,'edge-1',1800000010.0);
INSERT INTO "ticks" VALUES('gw1','a1',5,1800000005.0,1,X'000070410000804100008841',0.25,40.0,'edge-1',1800000010.0);
INSERT INTO "ticks" VALUES('gw1','a1',6,1800000006.0,1,X'00009041000098410000A041',0.25,40.0,'edge-1',1800000010.0);
INSERT INTO "ticks" VALUES('gw1','a1',7,1800000007.0,1,X'0000A8410000B0410000B841',0.25,40.0,'edge-1',1800000010.0);
CREATE UNIQUE INDEX "idx_feature_sets_names"
    ON "feature_sets" ("names");
CREATE INDEX "idx_ticks_gateway_asset_time"
    ON "ticks" ("gateway", "asset", "time");
CREATE INDEX "idx_shadow_scores_model_version"
    ON "shadow_scores" ("model_version");
CREATE INDEX "idx_alerts_published_at"
    ON "alerts" ("published_at");
CREATE UNIQUE INDEX "idx_alerts_gateway_asset_seq_source"
    ON "alerts" ("gateway", "asset", "seq", "source");
CREATE INDEX "idx_dead_letters_reason"
    ON "dead_letters" ("reason");
COMMIT;
