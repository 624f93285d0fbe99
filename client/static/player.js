/*
 * The NetLLM testbed player page: dash.js v5 with every built-in ABR rule off and one custom rule whose
 * decisions come from the controller service (see abr_rule.js for the scheduling design).
 *
 * Query parameters (all optional):
 *   mpd              manifest URL, relative to the page or absolute (default /media/manifest.mpd);
 *                    video.json is read from the same folder
 *   controller       base URL of the decision service (POST {controller}/v1/abr/decide); empty = none,
 *                    every chunk then uses the buffer-based fallback (reason no_controller)
 *   session_id       opaque id sent with every observation
 *   policy           policy name asked of the controller (sent as "policy" in the body; empty = the
 *                    controller's default)
 *   timeout_ms       decision deadline in ms (default 1000)
 *   default_quality  quality assumed before the first chunk (default 1, as in Pensieve)
 *   buffer_s         buffer target / maximum in seconds (default 60, as in Pensieve)
 *
 * Times reported are seconds since the session start, i.e. since this script started running
 * (performance.now based). Segment timings come from the browser's Resource Timing entry of the segment
 * (sub-millisecond) and, if there is none, from dash.js's request record (startDate / firstByteDate /
 * endDate, the dash.js HTTPRequest trequest / tresponse / _tfinish). Throughput = bytes / (finish - request).
 *
 * Every event goes to window.netllmReport(kind, payload) when Python exposed it (Playwright), and is kept
 * in window.netllmEvents. Kinds: page_loaded, ready, decision, chunk, startup, stall_start, stall_end,
 * ended, error, warning.
 */
(function () {
  'use strict';

  const T0_MS = performance.now();
  const nowS = () => (performance.now() - T0_MS) / 1000;
  const perfToS = (ms) => (ms - T0_MS) / 1000;
  const dateToS = (d) => (d instanceof Date ? (d.getTime() - performance.timeOrigin - T0_MS) / 1000 : NaN);
  const HISTORY_LEN = 16;
  const HORIZON = 5;
  const MIN_DOWNLOAD_S = 1e-4;
  const MAX_THROUGHPUT_KBPS = 9e7;  // netllm.abr_state accepts up to 1e8
  const END_SLACK_S = 0.25;  // playhead this close to the end, with every chunk in, counts as played to the end

  window.netllmEvents = [];

  function report(kind, payload) {
    const doc = Object.assign({t_s: nowS()}, payload || {});
    window.netllmEvents.push([kind, doc]);
    if (typeof window.netllmReport === 'function') {
      // The binding returns a promise; a closed page makes it reject, which is of no interest here.
      Promise.resolve(window.netllmReport(kind, doc)).catch(() => {});
    } else {
      console.log('netllm', kind, JSON.stringify(doc));
    }
  }

  function fatal(message, extra) {
    report('error', Object.assign({fatal: true, message: String(message)}, extra || {}));
  }

  window.addEventListener('error', (e) => {
    fatal('page error: ' + e.message, {source: e.filename, line: e.lineno});
  });
  window.addEventListener('unhandledrejection', (e) => {
    fatal('unhandled rejection: ' + (e.reason && e.reason.stack || e.reason));
  });

  function readConfig() {
    const q = new URLSearchParams(location.search);
    const num = (name, dflt) => {
      const v = q.get(name);
      if (v === null || v === '') return dflt;
      const x = Number(v);
      if (!isFinite(x)) throw new Error(`query parameter ${name}=${v} is not a number`);
      return x;
    };
    return {
      mpd: new URL(q.get('mpd') || '/media/manifest.mpd', location.href).href,
      controller: q.get('controller') || '',
      sessionId: q.get('session_id') || '',
      policy: q.get('policy') || '',
      timeoutMs: num('timeout_ms', 1000),
      defaultQuality: Math.trunc(num('default_quality', 1)),
      bufferS: num('buffer_s', 60),
    };
  }

  async function loadVideoInfo(mpdUrl) {
    const url = new URL('video.json', mpdUrl).href;
    const resp = await fetch(url, {cache: 'no-store'});
    if (!resp.ok) throw new Error(`${url}: HTTP ${resp.status}`);
    const doc = await resp.json();
    const ladder = doc.ladder_kbps, sizes = doc.chunk_sizes_bytes;
    if (!Array.isArray(ladder) || ladder.length < 1) throw new Error(`${url}: ladder_kbps missing`);
    if (!Array.isArray(sizes) || sizes.length !== ladder.length) {
      throw new Error(`${url}: chunk_sizes_bytes must have one row per level`);
    }
    const total = Number(doc.chunk_count || sizes[0].length);
    if (!(total >= 1) || sizes.some((row) => !Array.isArray(row) || row.length < total)) {
      throw new Error(`${url}: chunk_sizes_bytes rows shorter than chunk_count`);
    }
    const chunkS = Number(doc.chunk_duration_s);
    if (!(chunkS > 0)) throw new Error(`${url}: chunk_duration_s missing`);
    const repIds = Array.isArray(doc.representations) && doc.representations.length === ladder.length
      ? doc.representations.map(String) : null;
    return {url, ladder: ladder.map(Number), sizes, total, chunkS, repIds};
  }

  /** Seconds of video buffered ahead of the play head. */
  function bufferLevelS(video) {
    const t = video.currentTime, b = video.buffered;
    for (let i = 0; i < b.length; i++) {
      if (b.start(i) <= t + 0.5 && t <= b.end(i)) return Math.max(0, b.end(i) - t);
    }
    return 0;
  }

  function bufferedUpTo(video) {
    const b = video.buffered;
    return b.length ? b.end(b.length - 1) : 0;
  }

  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  class Session {
    constructor(cfg, info, video) {
      this.cfg = cfg;
      this.info = info;
      this.video = video;
      this.levels = info.ladder.length;
      this.repIds = info.repIds;
      this.completed = [];          // {quality, throughputKbps, downloadS}
      this.stallAtBoundaryS = 0;    // stall clock when the previous chunk's rebuffer window closed
      this.started = false;
      this.startupDelayS = null;
      this.stallTotalS = 0;
      this.stallStartS = null;
      this.ended = false;
      this.player = null;
      this.book = null;
    }

    qualityToRepId(q) {
      return this.repIds ? this.repIds[q] : this._sortedReps()[q].id;
    }

    repIdToQuality(id) {
      if (this.repIds) return this.repIds.indexOf(String(id));
      return this._sortedReps().findIndex((r) => r.id === id);
    }

    _sortedReps() {
      return this.player.getRepresentationsByType('video').slice().sort((a, b) => a.bandwidth - b.bandwidth);
    }

    stallClockS(t) {
      return this.stallTotalS + (this.stallStartS !== null ? Math.max(0, t - this.stallStartS) : 0);
    }

    observation(index) {
      const done = this.completed;
      const last = done.length ? done[done.length - 1].quality : this.cfg.defaultQuality;
      // A chunk whose timings the browser did not give (NaN) is left out: the controller refuses null samples.
      const hist = done.filter((c) => isFinite(c.throughputKbps) && isFinite(c.downloadS)).slice(-HISTORY_LEN);
      const rows = [];
      for (let k = index; k < Math.min(index + HORIZON, this.info.total); k++) {
        rows.push(this.info.sizes.map((levelRow) => Math.round(levelRow[k])));
      }
      const obs = {
        chunk_index: index,
        total_chunks: this.info.total,
        last_quality: last,
        buffer_s: bufferLevelS(this.video),
        // Bounded to what the observation schema accepts (a loopback download can look near-instant).
        throughput_kbps_history: hist.map((c) => Math.min(c.throughputKbps, MAX_THROUGHPUT_KBPS)),
        download_time_s_history: hist.map((c) => c.downloadS),
        upcoming_chunk_sizes_bytes: rows,
        ladder_kbps: this.info.ladder,
        rebuffer_s: this.stallClockS(nowS()),
        chunk_duration_s: this.info.chunkS,
        session_id: this.cfg.sessionId,
      };
      return obs;
    }

    fallbackDecision(index, reason, extra) {
      const bufferS = bufferLevelS(this.video);
      return Object.assign({
        chunk_index: index, quality: NetllmAbr.bufferBasedQuality(bufferS, this.info.ladder), fallback: true,
        reason: reason, buffer_s: bufferS, asked_at_s: nowS(), rtt_ms: null, controller_latency_ms: null,
        policy: 'fallback-bba',
      }, extra || {});
    }

    async decide(index) {
      const obs = this.observation(index);
      const body = Object.assign({}, obs);
      if (this.cfg.policy) body.policy = this.cfg.policy;
      const askedAt = nowS();
      const cfg = this.cfg;
      const answer = await NetllmAbr.askController(cfg.controller, body, cfg.timeoutMs, this.levels);
      let rec;
      if (answer.ok) {
        rec = {chunk_index: index, quality: answer.quality, fallback: false, reason: '',
          buffer_s: obs.buffer_s, asked_at_s: askedAt, rtt_ms: answer.rttMs,
          controller_latency_ms: answer.controllerLatencyMs, policy: answer.policy};
      } else {
        // The fallback looks at the buffer now (a timeout may have drained it), not at asking time.
        const extra = {rtt_ms: answer.rttMs, detail: answer.detail || ''};
        rec = this.fallbackDecision(index, answer.reason, extra);
        rec.buffer_s = obs.buffer_s;
        rec.asked_at_s = askedAt;
      }
      if (!this.book.put(index, rec)) {
        const used = this.book.get(index);
        report('warning', {message: `decision for chunk ${index} arrived after dash.js needed it`,
          chunk_index: index, late_quality: rec.quality, used_quality: used.quality});
        return used;
      }
      report('decision', rec);
      return rec;
    }

    chunkIndexOf(req) {
      const byTime = Math.round(Number(req.startTime) / this.info.chunkS);
      return isFinite(byTime) ? byTime : Number(req.index);
    }

    isVideoMedia(req) {
      return req && req.mediaType === 'video' && req.type === 'MediaSegment';
    }

    onLoadingStarted(e) {
      if (!this.isVideoMedia(e.request)) return;
      const index = this.chunkIndexOf(e.request);
      if (!this.book.requestStarted(index)) {
        report('warning', {message: `a video request without a usable chunk index (${index}) was ignored`});
      }
    }

    onLoadingCompleted(e) {
      const req = e.request;
      if (!this.isVideoMedia(req)) return;
      if (e.error) {
        report('warning', {message: 'segment download failed (dash.js retries)', url: req.url,
          error: String(e.error.message || e.error)});
        return;
      }
      this.finishChunk(req).catch((err) => fatal('chunk bookkeeping failed: ' + (err && err.stack || err)));
    }

    /** Timings of a segment: Resource Timing when present, else dash.js's own record. */
    timings(req) {
      const url = new URL(req.url, location.href).href;
      const entries = performance.getEntriesByName(url, 'resource');
      const entry = entries.length ? entries[entries.length - 1] : null;
      if (entry && entry.responseEnd > 0) {
        return {source: 'resource_timing', request: perfToS(entry.startTime),
          firstByte: perfToS(entry.responseStart > 0 ? entry.responseStart : entry.startTime),
          finish: perfToS(entry.responseEnd), bytes: entry.encodedBodySize || entry.transferSize || 0};
      }
      return {source: 'dashjs', request: dateToS(req.startDate),
        firstByte: dateToS(req.firstByteDate || req.startDate), finish: dateToS(req.endDate), bytes: 0};
    }

    async waitAppended(chunkEndS) {
      const limit = performance.now() + 5000;
      const duration = isFinite(this.video.duration) ? this.video.duration : chunkEndS;
      const target = Math.min(chunkEndS, duration) - 0.1;
      while (bufferedUpTo(this.video) < target && performance.now() < limit) await sleep(5);
    }

    async finishChunk(req) {
      const index = this.chunkIndexOf(req);
      const decision = this.book.get(index);
      const repId = req.representation && req.representation.id;
      const quality = this.repIdToQuality(repId);
      if (quality < 0) {
        throw new Error(`representation ${repId} of chunk ${index} is not in video.json's representations`);
      }
      await this.waitAppended((index + 1) * this.info.chunkS);
      const boundaryS = nowS();
      const tm = this.timings(req);
      const loaded = Number(req.bytesLoaded);
      const bytes = loaded > 0 ? loaded : (tm.bytes || this.info.sizes[quality][index]);
      const downloadS = Math.max(MIN_DOWNLOAD_S, tm.finish - tm.request);
      const throughputKbps = bytes * 8 / 1000 / downloadS;
      // A chunk is charged the stall time since the previous chunk completed (its decision wait and its
      // download), as in Pensieve; startup is not stall time (the clock runs only after the first frame).
      const stallNowS = this.stallClockS(boundaryS);
      const rebufferS = stallNowS - this.stallAtBoundaryS;
      this.stallAtBoundaryS = stallNowS;
      if (decision && decision.quality !== quality) {
        const message = `chunk ${index} played at quality ${quality}, decision ${decision.quality}`;
        report('warning', {message: message});
      }
      if (!isFinite(throughputKbps)) {
        report('warning', {message: `chunk ${index}: no usable download timing, left out of the throughput history`});
      }
      this.completed.push({quality, throughputKbps, downloadS});
      report('chunk', {
        chunk_index: index, quality: quality, bitrate_kbps: this.info.ladder[quality], chunk_bytes: bytes,
        request_time_s: tm.request, first_byte_time_s: tm.firstByte, finish_time_s: tm.finish,
        download_time_s: downloadS, throughput_kbps: throughputKbps,
        buffer_before_s: decision ? decision.buffer_s : NaN, buffer_after_s: bufferLevelS(this.video),
        rebuffer_s: Math.max(0, rebufferS),
        decision_latency_ms: decision && decision.rtt_ms !== null ? decision.rtt_ms : NaN,
        controller_latency_ms: decision ? decision.controller_latency_ms : null,
        fallback: decision ? !!decision.fallback : true,
        fallback_reason: decision ? decision.reason : 'no_decision',
        decided_by: decision ? decision.policy : null, representation_id: repId,
        url: req.url, timing_source: tm.source,
      });
      if (index + 1 < this.info.total) {
        // Pensieve decides when the previous chunk is in, once the buffer has room for another chunk.
        const full = () => bufferLevelS(this.video) + this.info.chunkS >= this.cfg.bufferS;
        while (full() && !this.ended) await sleep(20);
        await this.decide(index + 1);
      }
    }

    watchPlayback() {
      const v = this.video;
      v.addEventListener('playing', () => {
        const t = nowS();
        if (!this.started) {
          this.started = true;
          this.startupDelayS = t;
          report('startup', {startup_delay_s: t});
        } else if (this.stallStartS !== null) {
          const d = t - this.stallStartS;
          this.stallTotalS += d;
          this.stallStartS = null;
          report('stall_end', {duration_s: d, total_stall_s: this.stallTotalS});
        }
      });
      v.addEventListener('waiting', () => {
        if (this.started && !this.ended && this.stallStartS === null) {
          this.stallStartS = nowS();
          report('stall_start', {buffer_s: bufferLevelS(v), position_s: v.currentTime});
        }
      });
      v.addEventListener('ended', () => this.onEnded());
      // dash.js sometimes leaves the last few milliseconds of the stream as a "gap" it keeps jumping over
      // without ever firing 'ended' (seen about once in six 48-chunk sessions). Once every chunk is in and
      // the playhead is within END_SLACK_S of the end, the video has been played: end the session ourselves.
      const checkEnd = () => {
        if (this.ended || this.completed.length < this.info.total) return;
        if (v.currentTime >= this.info.total * this.info.chunkS - END_SLACK_S) this.onEnded();
      };
      v.addEventListener('timeupdate', checkEnd);
      setInterval(checkEnd, 250);
      v.addEventListener('error', () => {
        fatal('video element error: ' + (v.error ? v.error.code + ' ' + v.error.message : '?'));
      });
    }

    onEnded() {
      if (this.ended) return;
      const t = nowS();
      if (this.stallStartS !== null) {
        this.stallTotalS += t - this.stallStartS;
        this.stallStartS = null;
      }
      this.ended = true;
      report('ended', {chunks: this.completed.length, total_stall_s: this.stallTotalS,
        startup_delay_s: this.startupDelayS, position_s: this.video.currentTime});
    }

    dashSettings(firstQuality) {
      const off = {active: false};
      return {
        debug: {logLevel: dashjs.Debug.LOG_LEVEL_WARNING},
        streaming: {
          abr: {
            rules: {
              throughputRule: off, bolaRule: off, insufficientBufferRule: off, switchHistoryRule: off,
              droppedFramesRule: off, abandonRequestsRule: off, l2ARule: off, loLPRule: off,
            },
            initialBitrate: {video: this.info.ladder[firstQuality]},
            autoSwitchBitrate: {video: true},
            limitBitrateByPortal: false,
          },
          buffer: {
            bufferTimeAtTopQuality: this.cfg.bufferS, bufferTimeAtTopQualityLongForm: this.cfg.bufferS,
            bufferTimeDefault: this.cfg.bufferS, fastSwitchEnabled: false,
            bufferToKeep: this.cfg.bufferS, bufferPruningInterval: 30,
          },
          liveCatchup: {enabled: false},
          utcSynchronization: {enabled: false},
          lastBitrateCachingInfo: {enabled: false},
          lastMediaSettingsCachingInfo: {enabled: false},
          cmcd: {enabled: false},
          text: {defaultEnabled: false},
          // No request deadline: like Pensieve, a chunk is never abandoned however slow the link.
          fragmentRequestTimeout: 0,
          scheduling: {defaultTimeout: 100, scheduleWhilePaused: true},
        },
      };
    }

    async start() {
      this.player = dashjs.MediaPlayer().create();
      this.book = new NetllmAbr.DecisionBook(this.player, this.info.total, (i, why) => {
        const rec = this.fallbackDecision(i, why);
        report('decision', rec);
        return rec;
      });
      this.watchPlayback();
      report('ready', {ladder_kbps: this.info.ladder, total_chunks: this.info.total,
        chunk_duration_s: this.info.chunkS, default_quality: this.cfg.defaultQuality, mpd: this.cfg.mpd,
        controller: this.cfg.controller,
        policy: this.cfg.policy, session_id: this.cfg.sessionId, timeout_ms: this.cfg.timeoutMs,
        buffer_target_s: this.cfg.bufferS, dashjs_version: this.player.getVersion(),
        t0_epoch_ms: performance.timeOrigin + T0_MS});
      // The first chunk's quality is the controller's answer too: it is asked before dash.js starts.
      const first = await this.decide(0);
      this.player.updateSettings(this.dashSettings(first.quality));
      this.player.addABRCustomRule('qualitySwitchRules', 'ControllerRule',
        NetllmAbr.makeControllerRule(() => this.book, (q) => this.qualityToRepId(q)));
      const ev = dashjs.MediaPlayer.events;
      this.player.on(ev.FRAGMENT_LOADING_STARTED, (e) => this.onLoadingStarted(e));
      this.player.on(ev.FRAGMENT_LOADING_COMPLETED, (e) => this.onLoadingCompleted(e));
      this.player.on(ev.PLAYBACK_ENDED, () => this.onEnded());
      this.player.on(ev.ERROR, (e) => {
        const err = e.error || {};
        const text = err.message || JSON.stringify(err);
        fatal('dash.js error ' + (err.code || '') + ': ' + text, {code: err.code || null});
      });
      this.player.initialize(this.video, this.cfg.mpd, true);
    }
  }

  async function main() {
    report('page_loaded', {url: location.href, user_agent: navigator.userAgent});
    let cfg, info;
    try {
      cfg = readConfig();
      info = await loadVideoInfo(cfg.mpd);
      if (!(cfg.defaultQuality >= 0 && cfg.defaultQuality < info.ladder.length)) {
        throw new Error(`default_quality=${cfg.defaultQuality} outside 0..${info.ladder.length - 1}`);
      }
      if (typeof dashjs === 'undefined') throw new Error('dash.js did not load');
      performance.setResourceTimingBufferSize(100000);
      const session = new Session(cfg, info, document.getElementById('video'));
      window.netllmSession = session;
      await session.start();
    } catch (e) {
      fatal(e && e.message ? e.message : e);
    }
  }

  main();
})();
