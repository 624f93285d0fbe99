/*
 * The controller-backed ABR logic of the player page: asking the decision service, the buffer-based fallback,
 * and the dash.js quality-switch rule that applies the answers.
 *
 * Why the design looks like this: dash.js calls a rule's getSwitchRequest() synchronously right before it
 * requests the next media segment, but the controller answers over HTTP. So the decision for chunk n is
 * asked ahead of time (by player.js, once chunk n-1 is in the buffer, as Pensieve's player does) and
 * dash.js's segment scheduler is held while the answer is pending: a DecisionBook "gate" uses the
 * ScheduleController's managed-media-source pause (the public events managedMediaSourceEndStreaming /
 * managedMediaSourceStartStreaming, fired through player.trigger), and kicks the scheduler once the answer
 * (or the fallback) is in. When dash.js asks, the rule returns exactly the recorded decision for that chunk.
 * If the rule is ever asked before a decision exists (it should not be), it records a fallback decision
 * with reason "not_ready" on the spot, so the quality played is always the one in the log.
 *
 * Exposes window.NetllmAbr = {bufferBasedQuality, askController, parseDecision, DecisionBook,
 * makeControllerRule}.
 */
(function () {
  'use strict';

  const RESERVOIR_S = 5.0;
  const CUSHION_S = 10.0;

  /** BBA-like fallback: lowest level below the reservoir, top level above reservoir + cushion, and in
   *  between the highest level whose bitrate fits a rate that grows linearly with the buffer. */
  function bufferBasedQuality(bufferS, ladderKbps, reservoirS = RESERVOIR_S, cushionS = CUSHION_S) {
    const top = ladderKbps.length - 1;
    if (!(bufferS > reservoirS)) return 0;
    if (bufferS >= reservoirS + cushionS) return top;
    const rateKbps = ladderKbps[0] + (ladderKbps[top] - ladderKbps[0]) * (bufferS - reservoirS) / cushionS;
    let quality = 0;
    for (let q = 0; q <= top; q++) {
      if (ladderKbps[q] <= rateKbps) quality = q;
    }
    return quality;
  }

  /** Validate a decoded controller answer; returns {quality, policy, latencyMs} or throws Error(reason). */
  function parseDecision(doc, levels) {
    if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) throw new Error('bad_answer');
    const q = doc.quality;
    if (typeof q !== 'number' || !Number.isInteger(q) || q < 0 || q >= levels) throw new Error('bad_quality');
    const latency = typeof doc.latency_ms === 'number' && isFinite(doc.latency_ms) ? doc.latency_ms : null;
    const policy = typeof doc.policy === 'string' ? doc.policy : null;
    return {quality: q, policy: policy, latencyMs: latency};
  }

  /**
   * POST the observation to `${controllerUrl}/v1/abr/decide` with a deadline.
   * Resolves (never rejects) to {ok: true, quality, policy, controllerLatencyMs, rttMs} or
   * {ok: false, reason, rttMs, detail}. Reasons: timeout, network_error, http_<status>, bad_json,
   * bad_answer, bad_quality, no_controller.
   */
  async function askController(controllerUrl, body, timeoutMs, levels) {
    const t0 = performance.now();
    const rtt = () => performance.now() - t0;
    if (!controllerUrl) return {ok: false, reason: 'no_controller', rttMs: 0};
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), timeoutMs);
    try {
      const resp = await fetch(controllerUrl.replace(/\/+$/, '') + '/v1/abr/decide', {
        method: 'POST', headers: {'Content-Type': 'application/json'}, body: JSON.stringify(body),
        signal: abort.signal, cache: 'no-store',
      });
      const text = await resp.text();
      if (!resp.ok) {
        return {ok: false, reason: 'http_' + resp.status, rttMs: rtt(), detail: text.slice(0, 300)};
      }
      let doc;
      try {
        doc = JSON.parse(text);
      } catch (e) {
        return {ok: false, reason: 'bad_json', rttMs: rtt(), detail: text.slice(0, 300)};
      }
      try {
        const d = parseDecision(doc, levels);
        return {ok: true, quality: d.quality, policy: d.policy, controllerLatencyMs: d.latencyMs,
          rttMs: rtt()};
      } catch (e) {
        return {ok: false, reason: e.message, rttMs: rtt(), detail: text.slice(0, 300)};
      }
    } catch (e) {
      const reason = abort.signal.aborted ? 'timeout' : 'network_error';
      return {ok: false, reason: reason, rttMs: rtt(), detail: String(e)};
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Per-chunk decisions plus the scheduler gate. `nextIndex` is the chunk dash.js will request next; the
   * gate is closed exactly while that chunk has no decision yet.
   */
  class DecisionBook {
    constructor(player, totalChunks, fallbackFn) {
      this.player = player;
      this.totalChunks = totalChunks;
      this.fallbackFn = fallbackFn;  // (chunkIndex, reason) -> decision record
      this.decisions = new Map();
      this.nextIndex = 0;
      this.gateOpen = true;
      this.scheduleController = null;
    }

    has(index) { return this.decisions.has(index); }
    get(index) { return this.decisions.get(index); }

    /** Record the decision for a chunk (first one wins) and reopen the gate if dash.js waits for it. */
    put(index, decision) {
      if (this.decisions.has(index)) return false;
      this.decisions.set(index, decision);
      if (index === this.nextIndex) this._open();
      return true;
    }

    /** dash.js started requesting chunk `index`: the next one needs a decision before it may be requested. */
    requestStarted(index) {
      // A NaN would stick in nextIndex (Math.max propagates it) and leave every later chunk undecided.
      if (!Number.isInteger(index) || index < 0) return false;
      this.nextIndex = Math.max(this.nextIndex, index + 1);
      if (this.nextIndex < this.totalChunks && !this.decisions.has(this.nextIndex)) this._close();
      return true;
    }

    _close() {
      if (!this.gateOpen) return;
      this.gateOpen = false;
      this.player.trigger('managedMediaSourceEndStreaming', {}, {});
    }

    _open() {
      if (this.gateOpen) return;
      this.gateOpen = true;
      this.player.trigger('managedMediaSourceStartStreaming', {}, {});
      // Without a kick the scheduler would notice only at its next poll (scheduling.defaultTimeout).
      if (this.scheduleController) this.scheduleController.startScheduleTimer(0);
    }

    /** The decision for the chunk dash.js is about to request; a fallback is recorded if there is none. */
    decisionForNext() {
      const index = this.nextIndex;
      if (index >= this.totalChunks) return null;
      if (!this.decisions.has(index)) this.decisions.set(index, this.fallbackFn(index, 'not_ready'));
      return this.decisions.get(index);
    }
  }

  /** A dash.js class factory for the rule; the book is read at call time; qualityToRepId maps levels. */
  function makeControllerRule(getBook, qualityToRepId) {
    function ControllerRule() {
      const context = this.context;
      const SwitchRequest = dashjs.FactoryMaker.getClassFactoryByName('SwitchRequest');

      function getSwitchRequest(rulesContext) {
        const request = SwitchRequest(context).create();
        const book = getBook();
        if (!book || !rulesContext || rulesContext.getMediaType() !== 'video') return request;
        const scheduler = rulesContext.getScheduleController();
        if (scheduler) book.scheduleController = scheduler;
        const decision = book.decisionForNext();
        if (!decision) return request;
        const mediaInfo = rulesContext.getMediaInfo();
        const reps = rulesContext.getAbrController().getPossibleVoRepresentations(mediaInfo, true) || [];
        const wanted = qualityToRepId(decision.quality);
        const rep = reps.find((r) => r.id === wanted);
        if (!rep) return request;
        request.representation = rep;
        request.priority = SwitchRequest.PRIORITY.STRONG;
        request.reason = {rule: 'ControllerRule', chunk: book.nextIndex, fallback: !!decision.fallback};
        return request;
      }

      return {getSwitchRequest: getSwitchRequest, reset: function () {}};
    }
    ControllerRule.__dashjs_factory_name = 'ControllerRule';
    return dashjs.FactoryMaker.getClassFactory(ControllerRule);
  }

  window.NetllmAbr = {
    RESERVOIR_S, CUSHION_S, bufferBasedQuality, askController, parseDecision, DecisionBook,
    makeControllerRule,
  };
})();
