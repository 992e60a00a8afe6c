// Display names and units of the metric catalogue (contract section 4, ingest/catalogue.py).
import { getLang } from "./i18n.js";

export const DOMAINS = ["coldchain", "air", "water", "pool", "wastewater", "waste"];
export const SEVERITIES = ["critical", "warning", "info"];

// name -> [unit, Chinese label, English label]
const METRICS = {
  temp_c: ["°C", "温度", "Temperature"],
  rh_pct: ["%", "相对湿度", "Relative humidity"],
  door_open: ["", "门开", "Door open"],
  power_ok: ["", "供电正常", "Power OK"],
  battery_v: ["V", "电池电压", "Battery"],
  co2_ppm: ["ppm", "二氧化碳", "CO₂"],
  pm25_ugm3: ["µg/m³", "PM2.5", "PM2.5"],
  pm10_ugm3: ["µg/m³", "PM10", "PM10"],
  hcho_mgm3: ["mg/m³", "甲醛", "Formaldehyde"],
  tvoc_mgm3: ["mg/m³", "TVOC", "TVOC"],
  co_mgm3: ["mg/m³", "一氧化碳", "CO"],
  air_speed_ms: ["m/s", "风速", "Air speed"],
  free_chlorine_mgl: ["mg/L", "游离氯", "Free chlorine"],
  total_chlorine_mgl: ["mg/L", "总氯", "Total chlorine"],
  chlorine_dioxide_mgl: ["mg/L", "二氧化氯", "Chlorine dioxide"],
  combined_chlorine_mgl: ["mg/L", "化合性余氯", "Combined chlorine"],
  total_residual_chlorine_mgl: ["mg/L", "总余氯", "Total residual chlorine"],
  turbidity_ntu: ["NTU", "浑浊度", "Turbidity"],
  ph: ["", "pH", "pH"],
  conductivity_uscm: ["µS/cm", "电导率", "Conductivity"],
  water_temp_c: ["°C", "水温", "Water temperature"],
  orp_mv: ["mV", "氧化还原电位", "ORP"],
  urea_mgl: ["mg/L", "尿素", "Urea"],
  cod_mgl: ["mg/L", "化学需氧量", "COD"],
  flow_m3h: ["m³/h", "流量", "Flow"],
  fill_pct: ["%", "装载率", "Fill level"],
};

export function metricUnit(name) {
  return METRICS[name]?.[0] ?? "";
}

export function metricLabel(name) {
  const m = METRICS[name];
  if (!m) return name ?? "—";
  return getLang() === "zh" ? m[1] : m[2];
}

export function isBinaryMetric(name) {
  return name === "door_open" || name === "power_ok";
}

// The metrics of each domain, in display order (ingest/catalogue.py CATALOGUE).
export const DOMAIN_METRICS = {
  coldchain: ["temp_c", "rh_pct", "door_open", "power_ok", "battery_v"],
  air: ["temp_c", "rh_pct", "co2_ppm", "pm25_ugm3", "pm10_ugm3", "hcho_mgm3", "tvoc_mgm3",
    "co_mgm3", "air_speed_ms"],
  water: ["free_chlorine_mgl", "total_chlorine_mgl", "chlorine_dioxide_mgl", "turbidity_ntu",
    "ph", "conductivity_uscm", "water_temp_c"],
  pool: ["free_chlorine_mgl", "combined_chlorine_mgl", "ph", "turbidity_ntu", "water_temp_c",
    "orp_mv", "urea_mgl"],
  wastewater: ["total_residual_chlorine_mgl", "ph", "cod_mgl", "flow_m3h"],
  waste: ["temp_c", "rh_pct", "fill_pct"],
};

/** Metric names in the domain's display order, unknown ones last. */
export function sortMetrics(domain, names) {
  const order = DOMAIN_METRICS[domain] ?? [];
  const idx = (m) => (order.includes(m) ? order.indexOf(m) : order.length);
  return [...names].sort((a, b) => idx(a) - idx(b) || a.localeCompare(b));
}
